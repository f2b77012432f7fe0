//! Real parts for herald's tests (DESIGN.md "Real parts in tests"): private
//! PostgreSQL, Redis and `herald` processes on free 127.0.0.1 ports in
//! temporary directories, stopped by PID when their handle drops, plus
//! `eventually` for waiting on a condition with a deadline.
//!
//! # Layout
//! - `lib.rs`: [`free_port`], [`eventually`], [`temp_dir`], [`TestkitError`].
//! - [`postgres`]: the private [`PgServer`] (initdb + postgres, run as the `postgres`
//!   user when we are root) and [`test_database`] (a fresh database per test,
//!   on `HERALD_TEST_DATABASE_URL` or a shared private server).
//! - [`redis`]: the private [`RedisServer`].
//! - [`nginx`]: a private [`Nginx`] load balancer in front of gateways.
//! - [`cluster`]: a private Redis Cluster (`cluster::RedisCluster`).
//! - [`proxy`]: a fault-injecting TCP forwarder ([`proxy::Proxy`]: freeze,
//!   partition, sever, down) to put between a client and a private server.
//! - [`herald`]: the binary ([`herald_bin`]) run as a [`HeraldProcess`]
//!   configured by [`HeraldOptions`].
//! - `fuzz` (feature `proptest`): the proptest config of the crates'
//!   `#[cfg(test)] mod fuzz` (case counts, regression files).
//! - `child.rs`: finding binaries, signalling and reaping children by PID,
//!   log tails, and the guardian that stops a server when the test process
//!   dies without running destructors. Every server handle is built on it.
//!
//! Rules this crate keeps (STYLE.md "Smells we avoid"): no fixed ports, no
//! hard-coded `/tmp`, no `pkill`, no silent skips (a missing binary is an
//! error naming the Debian package to install), no fixed sleeps in tests
//! (polling loops always have a deadline).
//!
//! Dev-only: no herald crate depends on this one outside `[dev-dependencies]`,
//! and it depends on no herald crate.

use std::future::Future;
use std::time::Duration;

mod child;
pub mod cluster;
#[cfg(feature = "proptest")]
pub mod fuzz;
pub mod herald;
pub mod nginx;
pub mod postgres;
pub mod proxy;
pub mod redis;

pub use herald::{HeraldOptions, HeraldProcess, herald_bin};
pub use nginx::Nginx;
pub use postgres::{PgServer, TestDb, test_database};
pub use redis::RedisServer;

/// Why a private server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A program the test needs is not installed.
    #[error("{name} not found: install {install_hint}")]
    MissingBinary {
        /// The program, e.g. `redis-server`.
        name: String,
        /// What to install, e.g. the Debian package.
        install_hint: String,
    },
    /// A file or process operation failed.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    /// A server did not become ready in time (the message says which, with
    /// the tail of its log).
    #[error("timed out: {0}")]
    Timeout(String),
    /// A server or setup program exited with an error (the message has the
    /// tail of its log).
    #[error("failed: {0}")]
    Failed(String),
}

/// A TCP port on 127.0.0.1 that was free a moment ago: bound to port 0, read,
/// released. Another process may take it before the caller binds it, so
/// starters retry with a new port when binding fails.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .expect("binding 127.0.0.1:0 must succeed on a machine that runs tests");
    listener
        .local_addr()
        .expect("a bound listener has a local address")
        .port()
}

/// Polls `f` every 20 ms until it returns true; panics with
/// `timed out after {timeout:?} waiting for: {what}` when `timeout` passes
/// first (also when one call of `f` is still running at the deadline).
///
/// Works with paused tokio time (`tokio::time::pause`) as well as real time.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, f()).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => panic!("timed out after {timeout:?} waiting for: {what}"),
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh directory under [`std::env::temp_dir`] named `herald-test-*`,
/// removed when the returned value drops.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("herald-test-")
        .tempdir()
        .expect("creating a directory under the system temp dir must succeed in tests")
}

/// 32 random lowercase hex characters (secrets, database names).
pub(crate) fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn free_port_is_bindable() {
        let p = free_port();
        assert_ne!(p, 0);
        std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
    }

    #[test]
    fn temp_dir_has_prefix_under_system_temp() {
        let d = temp_dir();
        assert!(d.path().starts_with(std::env::temp_dir()));
        let name = d.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("herald-test-"), "{name}");
    }

    #[tokio::test]
    async fn eventually_returns_once_true() {
        let n = Arc::new(AtomicU32::new(0));
        eventually(Duration::from_secs(5), "third call", || {
            let n = n.clone();
            async move { n.fetch_add(1, Ordering::SeqCst) >= 2 }
        })
        .await;
        assert_eq!(n.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 1s waiting for: never")]
    async fn eventually_panics_at_deadline() {
        eventually(Duration::from_secs(1), "never", || async { false }).await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "waiting for: a hung check")]
    async fn eventually_bounds_a_hung_check() {
        eventually(Duration::from_secs(1), "a hung check", || {
            std::future::pending::<bool>()
        })
        .await;
    }

    #[test]
    fn random_hex_is_32_hex_chars() {
        let a = random_hex();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_hex());
    }
}
