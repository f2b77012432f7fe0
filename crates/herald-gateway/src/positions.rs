//! Merges concurrent one-channel position reads into one `POST
//! /v1/positions` (issue 13: the topology's connect rate).
//!
//! Every new subscription on a gateway of the Redis topology reads its
//! channel's last seq from ingest. In a connect storm each connection's
//! automatic subscription used to be its own HTTP request and its own store
//! query. Here reads wait in one list; at most [`MAX_BATCHES_IN_FLIGHT`]
//! requests run at once, each taking everything waiting when it starts (up
//! to [`MAX_BATCH`] channels, PROTOCOL.md's limit for the call, duplicates
//! sent once).
//!
//! Correctness: a subscriber's read must start after the subscriber was
//! added to the hub (conn.rs, subscribe steps 1-3). A read is only ever
//! served by a request that took it from the list, so that request started
//! after the read was asked for: never by one already in flight.
//!
//! A failed request fails every read it carried with the same error (the
//! caller's error path is the one it had for its own request). With no
//! contention a read is one request at once, as before, plus one task
//! spawn.

use crate::ingest::IngestError;
use futures_util::future::BoxFuture;
use herald_protocol::ChannelName;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Requests in flight at once; reads asked for meanwhile wait for the next.
pub const MAX_BATCHES_IN_FLIGHT: usize = 2;
/// Channels in one request (PROTOCOL.md: `/v1/positions` takes at most
/// 1000).
pub const MAX_BATCH: usize = 1000;

type Reply = oneshot::Sender<Result<u64, IngestError>>;
/// Reads the positions of distinct channels, in the order given.
pub type Fetch =
    dyn Fn(Vec<ChannelName>) -> BoxFuture<'static, Result<Vec<u64>, IngestError>> + Send + Sync;

/// The merged reader.
pub struct Batcher {
    fetch: Arc<Fetch>,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Requests running (each a task looping while reads wait).
    running: usize,
    waiting: Vec<(ChannelName, Reply)>,
}

impl Batcher {
    /// A batcher over `fetch`.
    pub fn new(fetch: Arc<Fetch>) -> Self {
        Self {
            fetch,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// One channel's position, read by a request that starts after this
    /// call.
    pub async fn position(&self, ch: &ChannelName) -> Result<u64, IngestError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = lock(&self.state);
            s.waiting.push((ch.clone(), tx));
            let start = s.running < MAX_BATCHES_IN_FLIGHT;
            if start {
                s.running += 1;
            }
            start
        };
        if start {
            tokio::spawn(run(self.fetch.clone(), self.state.clone()));
        }
        rx.await
            .unwrap_or_else(|_| Err(IngestError::unavailable("position read abandoned")))
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One request slot: takes what waits, reads it, answers, until nothing
/// waits.
async fn run(fetch: Arc<Fetch>, state: Arc<Mutex<State>>) {
    loop {
        let batch: Vec<(ChannelName, Reply)> = {
            let mut s = lock(&state);
            // Readers that gave up (their connection closed) need no read.
            s.waiting.retain(|(_, tx)| !tx.is_closed());
            if s.waiting.is_empty() {
                s.running -= 1;
                return;
            }
            let n = s.waiting.len().min(MAX_BATCH);
            s.waiting.drain(..n).collect()
        };
        let mut names: Vec<ChannelName> = batch.iter().map(|(c, _)| c.clone()).collect();
        names.sort_unstable();
        names.dedup();
        let answer = fetch(names.clone()).await;
        for (ch, tx) in batch {
            let r = match &answer {
                Ok(seqs) => Ok(names
                    .binary_search(&ch)
                    .ok()
                    .and_then(|i| seqs.get(i).copied())
                    .unwrap_or(0)),
                Err(e) => Err(e.clone()),
            };
            let _ = tx.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    /// A store whose position of `chat_<n>` is its "seq", bumped by
    /// `publish`; the fetch records each request's channel list and holds
    /// each request for a while so others pile up behind it.
    struct Fake {
        seq: AtomicU64,
        requests: Mutex<Vec<Vec<ChannelName>>>,
    }

    fn batcher(fake: &Arc<Fake>, hold: Duration) -> Batcher {
        let f = fake.clone();
        Batcher::new(Arc::new(move |names: Vec<ChannelName>| {
            let f = f.clone();
            Box::pin(async move {
                // The read happens when the request starts.
                let seq = f.seq.load(Ordering::SeqCst);
                f.requests.lock().unwrap().push(names.clone());
                tokio::time::sleep(hold).await;
                Ok(names
                    .iter()
                    .map(|c| seq + c.as_str().len() as u64)
                    .collect())
            }) as BoxFuture<'static, _>
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_reads_share_requests_and_get_their_own_answers() {
        let fake = Arc::new(Fake {
            seq: AtomicU64::new(100),
            requests: Mutex::new(Vec::new()),
        });
        let b = Arc::new(batcher(&fake, Duration::from_millis(5)));
        let mut tasks = Vec::new();
        for i in 0..300 {
            let b = b.clone();
            // 30 distinct channels, each asked for 10 times.
            let name = format!("chat_{}", "x".repeat(i % 30));
            tasks.push(tokio::spawn(async move {
                let got = b.position(&ch(&name)).await.unwrap();
                (name, got)
            }));
        }
        for t in tasks {
            let (name, got) = t.await.unwrap();
            assert_eq!(got, 100 + name.len() as u64, "{name}");
        }
        let reqs = fake.requests.lock().unwrap().clone();
        let total: usize = reqs.iter().map(Vec::len).sum();
        assert!(
            reqs.len() <= 4,
            "300 concurrent reads took {} requests",
            reqs.len()
        );
        assert!(
            total <= 60,
            "duplicates are sent once per request: {reqs:?}"
        );
        for r in &reqs {
            let mut s = r.clone();
            s.dedup();
            assert_eq!(&s, r, "a request names a channel once");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_is_never_served_by_a_request_already_running() {
        let fake = Arc::new(Fake {
            seq: AtomicU64::new(1),
            requests: Mutex::new(Vec::new()),
        });
        let b = Arc::new(batcher(&fake, Duration::from_millis(50)));
        // Fill both request slots with reads made at seq 1.
        let early: Vec<_> = (0..MAX_BATCHES_IN_FLIGHT)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.position(&ch("chat_a")).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        // A message is stored; a read asked for now must see it.
        fake.seq.store(7, Ordering::SeqCst);
        let late = b.position(&ch("chat_a")).await.unwrap();
        assert_eq!(
            late,
            7 + 6,
            "read served by a request that started before it"
        );
        for e in early {
            assert_eq!(e.await.unwrap().unwrap(), 1 + 6);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_request_fails_each_read_it_carried_and_the_next_succeeds() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let b = Arc::new(Batcher::new(Arc::new(move |names: Vec<ChannelName>| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if n == 0 {
                    Err(IngestError::unavailable("ingest down"))
                } else {
                    Ok(vec![9_u64; names.len()])
                }
            }) as BoxFuture<'static, _>
        })));
        let first: Vec<_> = (0..3)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.position(&ch(&format!("chat_{i}"))).await })
            })
            .collect();
        let mut errs = 0;
        for f in first {
            match f.await.unwrap() {
                Err(e) => {
                    assert_eq!(e.message, "ingest down");
                    errs += 1;
                }
                Ok(v) => assert_eq!(v, 9),
            }
        }
        assert!(errs >= 1, "the failed request's reads got its error");
        assert_eq!(b.position(&ch("chat_z")).await.unwrap(), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn more_than_one_call_limit_is_split() {
        let fake = Arc::new(Fake {
            seq: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let b = Arc::new(batcher(&fake, Duration::from_millis(5)));
        let tasks: Vec<_> = (0..2500)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.position(&ch(&format!("c{i}"))).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let reqs = fake.requests.lock().unwrap();
        assert!(reqs.iter().all(|r| r.len() <= MAX_BATCH));
        assert_eq!(reqs.iter().map(Vec::len).sum::<usize>(), 2500);
    }
}
