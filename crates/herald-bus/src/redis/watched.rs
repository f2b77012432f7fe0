//! A replaceable Redis connection that watches its own health
//! ([`Watched`]): it counts consecutive link failures (no answer within the
//! bound, I/O errors) of the requests and PINGs made on it and, at the
//! threshold, drops the connection so its owner builds a new one. This is
//! what catches a half-open link (a Redis host gone without RST, a
//! partition): redis-rs reconnects on I/O errors only, and a silent socket
//! gives none (PROTOCOL/issue item 5).
//!
//! Invariants:
//! - A failure counts only against the connection generation it happened
//!   on: a late timeout from a replaced connection never condemns its
//!   successor. Any answer from Redis (error replies included) resets the
//!   count.
//! - Exactly one caller sees the drop (`observe` returns true once per
//!   generation), which counts it in
//!   `herald_bus_connection_rebuilds_total` and wakes the owner's rebuild.
//! - The lock is a std Mutex held for a few instructions, never across an
//!   await.
//!
//! Must not: connect. Building the successor (when, how often, what callers
//! get meanwhile) is the owner's policy: `command.rs` and `subscriber.rs`.

use super::conn::{Conn, Failure};
use crate::metrics;
use std::sync::{Mutex, MutexGuard};
use tracing::warn;

/// Which connection this is (the `conn` label of the rebuild counter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// The shared command connection (publish, presence, ping).
    Command,
    /// An attachment's subscriber connection.
    Subscriber,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Command => "command",
            Role::Subscriber => "subscriber",
        }
    }
}

/// The current connection of one owner and its failure count (generic
/// only so the bookkeeping is unit-tested without a server).
pub(crate) struct Watched<C = Conn> {
    role: Role,
    /// Consecutive link failures that condemn a connection (at least 1).
    max_failures: u32,
    state: Mutex<State<C>>,
}

struct State<C> {
    /// `None` before the first connection and after a drop, until the owner
    /// installs a new one.
    conn: Option<C>,
    /// Generation of `conn` (or of the last one installed).
    generation: u64,
    /// Consecutive link failures on `conn`.
    failures: u32,
    /// Last generation handed out by `next_generation` (never reused, so a
    /// failed attempt's pushes cannot pass for a later connection's).
    issued: u64,
}

impl<C: Clone> Watched<C> {
    /// An empty slot; `max_failures` is raised to 1 if 0.
    pub(crate) fn new(role: Role, max_failures: u32) -> Watched<C> {
        Watched {
            role,
            max_failures: max_failures.max(1),
            state: Mutex::new(State {
                conn: None,
                generation: 0,
                failures: 0,
                issued: 0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State<C>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live connection and its generation (clones share the socket).
    pub(crate) fn current(&self) -> Option<(C, u64)> {
        let s = self.state();
        s.conn.clone().map(|c| (c, s.generation))
    }

    /// Whether `generation` is the live connection.
    pub(crate) fn is_current(&self, generation: u64) -> bool {
        let s = self.state();
        s.conn.is_some() && s.generation == generation
    }

    /// A fresh generation number for a connection about to be built.
    pub(crate) fn next_generation(&self) -> u64 {
        let mut s = self.state();
        s.issued += 1;
        s.issued
    }

    /// Makes `conn` (built for `generation`) the live connection, with a
    /// clean failure count. The one it replaces, if any, is dropped.
    pub(crate) fn install(&self, generation: u64, conn: C) {
        let old = {
            let mut s = self.state();
            s.generation = generation;
            s.failures = 0;
            s.conn.replace(conn)
        };
        drop(old);
    }

    /// Records the outcome of a request made on `generation`. Returns true
    /// when this failure was the last straw: the connection is dropped (its
    /// socket closes once in-flight requests, each bounded, let go of it)
    /// and the caller must wake the owner's rebuild.
    pub(crate) fn observe<T>(&self, generation: u64, outcome: &Result<T, Failure>) -> bool {
        let dropped = {
            let mut s = self.state();
            if s.generation != generation || s.conn.is_none() {
                return false;
            }
            match outcome {
                Err(f) if f.link => {
                    s.failures += 1;
                    if s.failures < self.max_failures {
                        return false;
                    }
                    s.failures = 0;
                    s.conn.take()
                }
                _ => {
                    s.failures = 0;
                    return false;
                }
            }
        };
        drop(dropped);
        match self.role {
            Role::Command => metrics::command_rebuilds().increment(1),
            Role::Subscriber => metrics::subscriber_rebuilds().increment(1),
        }
        let error = match outcome {
            Err(f) => f.to_string(),
            Ok(_) => String::new(),
        };
        warn!(
            conn = self.role.label(),
            failures = self.max_failures,
            error = %error,
            "redis connection unresponsive; dropping it and building a new one"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BusError;

    fn link_failure() -> Result<(), Failure> {
        Err(Failure {
            error: BusError::Unavailable("timed out".into()),
            link: true,
        })
    }

    fn error_reply() -> Result<(), Failure> {
        Err(Failure {
            error: BusError::Unavailable("ERR script".into()),
            link: false,
        })
    }

    fn installed(max_failures: u32) -> (Watched<&'static str>, u64) {
        let w = Watched::new(Role::Command, max_failures);
        let g = w.next_generation();
        w.install(g, "first");
        (w, g)
    }

    #[test]
    fn drops_after_consecutive_link_failures_only() {
        let (w, g) = installed(3);
        assert!(!w.observe(g, &link_failure()));
        assert!(!w.observe(g, &link_failure()));
        // An answer (even an error reply) proves the link: count restarts.
        assert!(!w.observe(g, &error_reply()));
        assert!(!w.observe(g, &link_failure()));
        assert!(!w.observe(g, &Ok(())));
        assert!(!w.observe(g, &link_failure()));
        assert!(!w.observe(g, &link_failure()));
        assert_eq!(w.current(), Some(("first", g)));
        assert!(w.observe(g, &link_failure()), "third in a row drops it");
        assert_eq!(w.current(), None);
        assert!(!w.is_current(g));
        // Exactly one caller sees the drop.
        assert!(!w.observe(g, &link_failure()));
    }

    #[test]
    fn late_failures_of_a_replaced_connection_do_not_count() {
        let (w, old) = installed(1);
        let new = w.next_generation();
        assert_ne!(new, old);
        w.install(new, "second");
        assert!(!w.observe(old, &link_failure()));
        assert_eq!(w.current(), Some(("second", new)));
        assert!(w.is_current(new) && !w.is_current(old));
        assert!(w.observe(new, &link_failure()));
    }

    #[test]
    fn generations_are_never_reused() {
        let w: Watched<&str> = Watched::new(Role::Subscriber, 0);
        let a = w.next_generation();
        // A failed attempt: nothing installed, the number is spent anyway.
        let b = w.next_generation();
        assert!(b > a);
        w.install(b, "conn");
        assert!(w.is_current(b) && !w.is_current(a));
        // max_failures 0 means 1.
        assert!(w.observe(b, &link_failure()));
    }
}
