//! The subscription table's fan-out (`herald_gateway::hub::Hub`): one
//! envelope published on the in-process bus (`LocalBus`, as in `herald
//! dev`) reaches N live subscribers of one channel. Measured: the publish
//! call, i.e. envelope check, one encode per encoding, and N pushes of the
//! shared `Bytes` into N outboxes (DESIGN.md performance model). Not
//! measured: the writers; the outboxes are drained between iterations.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herald_benches::{NoHistory, sample_data};
use herald_bus::Bus;
use herald_bus::local::LocalBus;
use herald_gateway::hub::{ConnHandle, GoLive, Hub};
use herald_gateway::outbox::{Outbox, Take};
use herald_protocol::bus::Envelope;
use herald_protocol::{ChannelName, Encoding};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// PROTOCOL.md section 7 default outbound bound.
const QUEUE_BYTES: usize = 1 << 20;

struct Table {
    /// Kept alive: the bus holds it only weakly.
    _hub: Arc<Hub>,
    bus: LocalBus,
    conns: Vec<Arc<ConnHandle>>,
    ch: ChannelName,
    seq: u64,
}

async fn table(n: usize) -> Table {
    let bus = LocalBus::new();
    let b = bus.clone();
    let hub = Hub::new(
        Arc::new(NoHistory),
        move |h| b.attach(h),
        Duration::from_millis(200),
        QUEUE_BYTES,
    );
    let ch = ChannelName::new("dashboard_website_12").expect("a valid channel name");
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let num = u64::try_from(i).expect("fits") + 1;
        let conn = Arc::new(ConnHandle {
            num,
            id: Arc::from(format!("c_{num}")),
            enc: Encoding::Json,
            outbox: Outbox::new(QUEUE_BYTES),
            client: OnceLock::new(),
        });
        hub.add(&ch, &conn, false, None).expect("no cap");
        conns.push(conn);
    }
    hub.bus_ready(&ch).await.expect("the local bus subscribes");
    for c in &conns {
        assert!(matches!(hub.go_live(&ch, c.num, 0), GoLive::Done));
    }
    Table {
        _hub: hub,
        bus,
        conns,
        ch,
        seq: 0,
    }
}

impl Table {
    fn envelope(&mut self, data: &herald_protocol::JsonData) -> Envelope {
        self.seq += 1;
        Envelope::message(
            self.ch.clone(),
            self.seq,
            format!("m_{:032x}", self.seq),
            1_731_067_200_123,
            Some("visitor:abc".into()),
            data,
        )
    }

    /// Empties every outbox; returns the frames taken (each must have one).
    async fn drain(&self) -> usize {
        let mut frames = 0;
        for c in &self.conns {
            match c.outbox.take().await {
                Take::Frames(f) => frames += f.len(),
                Take::Close(_) | Take::Stop => panic!("a bench outbox closed"),
            }
        }
        frames
    }
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let data = sample_data();
    let mut g = c.benchmark_group("hub_fanout");
    for n in [1_000usize, 10_000] {
        let mut t = rt.block_on(table(n));
        // One warm publish: the encode cache and queues are exercised once
        // and the frame size is checked.
        let env = t.envelope(&data);
        rt.block_on(async {
            t.bus.publish(&env).await.expect("local publish");
            assert_eq!(t.drain().await, n);
        });
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let env = t.envelope(&data);
                    rt.block_on(async {
                        let t0 = Instant::now();
                        t.bus.publish(&env).await.expect("local publish");
                        spent += t0.elapsed();
                        assert_eq!(t.drain().await, n, "every subscriber got the frame");
                    });
                }
                spent
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = fanout
}
criterion_main!(benches);
