//! The shared command connection ([`CommandConn`]: publish, presence, ping)
//! and its keeper task, which PINGs it and rebuilds it when it stops
//! answering.
//!
//! Invariants:
//! - ONE connection per [`CommandConn`] (clones share it), watched by
//!   [`Watched`]: `max_failures` consecutive link failures of any request or
//!   keeper PING (each bounded) drop it, and the keeper builds a new one
//!   (retrying every ping interval until Redis answers).
//! - Requests never wait for a connection: while there is none they fail at
//!   once with [`BusError::Unavailable`]; otherwise each is bounded by the
//!   response timeout. Never a hang, never a queue of stuck callers.
//! - ONE keeper task per connection, holding only a `Weak` and a
//!   cancellation token: it stops when the last clone drops. It runs on the
//!   runtime that connected.
//!
//! Must not: retry a request (a publish that timed out may have been
//! delivered; the caller decides).

use super::Health;
use super::conn::{Conn, Endpoint, Failure, RESPONSE_TIMEOUT};
use super::watched::{Role, Watched};
use crate::BusError;
use ::redis::{Cmd, FromRedisValue, Pipeline, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// A self-healing command connection to Redis or Redis Cluster (cheap to
/// clone: clones share the connection and its keeper).
#[derive(Clone)]
pub(crate) struct CommandConn {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    health: Health,
    watched: Watched,
    /// Wakes the keeper when a request condemned the connection.
    wake: Arc<Notify>,
    /// Set once a rebuild attempt failed, so an outage warns once.
    rebuild_failing: AtomicBool,
    /// Stops the keeper when the last clone drops.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl CommandConn {
    /// Connects, checks that Redis answers (bounded), and spawns the keeper
    /// on the current runtime.
    pub(crate) async fn connect(
        endpoint: Endpoint,
        health: Health,
    ) -> Result<CommandConn, BusError> {
        let conn = Conn::connect(&endpoint).await?;
        conn.ping(RESPONSE_TIMEOUT).await?;
        let watched = Watched::new(Role::Command, health.max_failures);
        watched.install(watched.next_generation(), conn);
        let inner = Arc::new(Inner {
            endpoint,
            health,
            watched,
            wake: Arc::new(Notify::new()),
            rebuild_failing: AtomicBool::new(false),
            stop: CancellationToken::new(),
        });
        tokio::spawn(keeper(
            Arc::downgrade(&inner),
            inner.wake.clone(),
            inner.stop.clone(),
            health,
        ));
        Ok(CommandConn { inner })
    }

    /// Sends one command and reads its reply: bounded by the response
    /// timeout, or an immediate [`BusError::Unavailable`] while the
    /// connection is being rebuilt.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BusError> {
        self.observed(|conn| async move { conn.query(cmd).await })
            .await
    }

    /// Sends a pipeline and reads its replies: one request for the bound
    /// and the health count (a timeout counts as one link failure), or an
    /// immediate [`BusError::Unavailable`] while the connection is being
    /// rebuilt.
    pub(crate) async fn query_pipeline(&self, pipe: &Pipeline) -> Result<(), BusError> {
        self.observed(|conn| async move { conn.query_pipeline(pipe).await })
            .await
    }

    /// Runs one request on the current connection and counts its outcome
    /// for the health check (which rebuilds a failing link).
    async fn observed<T, F>(&self, request: impl FnOnce(Conn) -> F) -> Result<T, BusError>
    where
        F: std::future::Future<Output = Result<T, Failure>>,
    {
        let Some((conn, generation)) = self.inner.watched.current() else {
            return Err(BusError::Unavailable(
                "redis command connection is being rebuilt".into(),
            ));
        };
        let outcome = request(conn).await;
        self.inner.observe(generation, &outcome);
        outcome.map_err(BusError::from)
    }

    /// PING (on a cluster: every primary).
    pub(crate) async fn ping(&self) -> Result<(), BusError> {
        self.query::<Value>(&::redis::cmd("PING")).await.map(|_| ())
    }
}

impl Inner {
    fn observe<T>(&self, generation: u64, outcome: &Result<T, Failure>) {
        if self.watched.observe(generation, outcome) {
            self.wake.notify_one();
        }
    }

    /// One keeper round: PING the connection, or build a new one.
    async fn keep(&self) {
        if let Some((conn, generation)) = self.watched.current() {
            let outcome = conn.ping(self.health.ping_timeout).await;
            if let Err(e) = &outcome {
                debug!(error = %e, "redis command connection ping failed");
            }
            self.observe(generation, &outcome);
            return;
        }
        let generation = self.watched.next_generation();
        let built = async {
            let conn = Conn::connect(&self.endpoint).await?;
            conn.ping(RESPONSE_TIMEOUT).await?;
            Ok::<Conn, Failure>(conn)
        }
        .await;
        match built {
            Ok(conn) => {
                self.watched.install(generation, conn);
                self.rebuild_failing.store(false, Ordering::Relaxed);
                info!("redis command connection rebuilt");
            }
            Err(e) if self.rebuild_failing.swap(true, Ordering::Relaxed) => {
                debug!(error = %e, "redis command connection rebuild failed again; retrying");
            }
            Err(e) => {
                warn!(error = %e, "redis command connection rebuild failed; retrying every ping interval");
            }
        }
    }
}

/// PINGs every ping interval; rebuilds when woken by a condemned connection
/// (or on the next tick after a failed attempt).
async fn keeper(inner: Weak<Inner>, wake: Arc<Notify>, stop: CancellationToken, health: Health) {
    let mut tick = tokio::time::interval(health.ping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            _ = tick.tick() => {}
        }
        // Holding the Arc for one round is fine: every step is bounded.
        let Some(inner) = inner.upgrade() else { return };
        inner.keep().await;
    }
}
