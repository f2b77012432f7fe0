//! Frame encode and decode, JSON and MessagePack (PROTOCOL.md section 5a).
//!
//! - `encode/*`: a server `message` frame with ~200 bytes of `data`, as the
//!   hub encodes it once per message and encoding (`herald_protocol::encode`),
//!   and with the WebSocket header added (`ws::encode_frame`).
//! - `decode/*`: a client `publish` request (`decode_request`), as the
//!   gateway decodes every inbound frame.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_benches::{sample_data, sample_message};
use herald_protocol::{
    ChannelName, DecodeLimits, Encoding, Op, Request, decode_request, encode, encode_request,
};
use std::hint::black_box;

const LIMITS: DecodeLimits = DecodeLimits {
    max_data_bytes: 16 * 1024,
};

fn encoding(c: &mut Criterion) {
    let msg = sample_message();
    let mut g = c.benchmark_group("encode");
    for enc in [Encoding::Json, Encoding::Msgpack] {
        let len = encode(enc, &msg).len() as u64;
        g.throughput(Throughput::Bytes(len));
        g.bench_function(format!("message_{}", enc.label()), |b| {
            b.iter(|| encode(enc, black_box(&msg)))
        });
        g.bench_function(format!("ws_frame_{}", enc.label()), |b| {
            b.iter(|| herald_gateway::ws::encode_frame(enc, black_box(&msg)))
        });
    }
    g.finish();
}

fn decoding(c: &mut Criterion) {
    let req = Request {
        id: 2,
        op: Op::Publish {
            channel: ChannelName::new("chat_8942b9df-77c8-4e5f-a7eb-097aace75053")
                .expect("a valid channel name"),
            data: sample_data(),
            key: Some("m-6f1c".into()),
        },
    };
    let mut g = c.benchmark_group("decode");
    for enc in [Encoding::Json, Encoding::Msgpack] {
        let bytes = encode_request(enc, &req);
        assert_eq!(
            decode_request(enc, &bytes, LIMITS).expect("the bench frame decodes"),
            req
        );
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("publish_{}", enc.label()), |b| {
            b.iter(|| decode_request(enc, black_box(&bytes), LIMITS))
        });
    }
    g.finish();
}

criterion_group!(benches, encoding, decoding);
criterion_main!(benches);
