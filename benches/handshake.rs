//! The cost of accepting one WebSocket: parse and validate the upgrade request, compute
//! `Sec-WebSocket-Accept`, write the 101. The request is what Chrome sends (about 550
//! bytes, 13 headers, a subprotocol offer and permessage-deflate), so the figure is the
//! per-connection CPU price of the handshake at connection-storm time.
//!
//! Run: `cargo bench --bench handshake -- --warm-up-time 1 --measurement-time 3`
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wsgate::limits::Limits;
use wsgate::proto::handshake::{self, HandshakeConfig, parse_request};

const CHROME: &[u8] = b"GET /ws?token=abc%20def&room=lobby HTTP/1.1\r\n\
    Host: chat.example.com\r\n\
    Connection: Upgrade\r\n\
    Pragma: no-cache\r\n\
    Cache-Control: no-cache\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
    Upgrade: websocket\r\n\
    Origin: https://chat.example.com\r\n\
    Sec-WebSocket-Version: 13\r\n\
    Accept-Encoding: gzip, deflate, br, zstd\r\n\
    Accept-Language: en-US,en;q=0.9\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
    Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n\
    \r\n";

fn config() -> HandshakeConfig {
    HandshakeConfig {
        paths: vec!["/ws".into()],
        allowed_origins: vec!["https://chat.example.com".into()],
        subprotocols: vec!["chat.v2".into(), "chat.v1".into()],
    }
}

fn bench_handshake(c: &mut Criterion) {
    let limits = Limits::default();
    let cfg = config();
    // The caller's write buffer, reused across connections as a shard would.
    let mut out = Vec::with_capacity(256);

    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Bytes(CHROME.len() as u64));
    group.bench_function("parse_request", |b| {
        b.iter(|| parse_request(black_box(CHROME), &limits, &cfg))
    });
    // The whole accept path: parse, validate, accept key (inside write_response), 101.
    group.bench_function("parse_accept_respond", |b| {
        b.iter(|| {
            out.clear();
            let request = parse_request(black_box(CHROME), &limits, &cfg)
                .expect("the sample is valid")
                .expect("the sample is complete");
            request.write_response(&mut out);
            black_box(&out);
        })
    });
    group.finish();

    c.bench_function("accept_key", |b| {
        b.iter(|| handshake::accept_key(black_box(b"dGhlIHNhbXBsZSBub25jZQ==")))
    });
}

criterion_group!(benches, bench_handshake);
criterion_main!(benches);
