//! The cost of accepting one WebSocket: parse and validate the upgrade request, compute
//! `Sec-WebSocket-Accept`, write the 101. The request is what Chrome sends (about 550
//! bytes, 13 headers, a subprotocol offer and permessage-deflate), so the figure is the
//! per-connection CPU price of the handshake at connection-storm time.
//!
//! Each routine is measured twice: by wall clock (criterion's default), and by the
//! on-CPU time of the benchmark thread (group `handshake_cpu`; Linux only, wall
//! clock elsewhere).
//! On a machine shared with other builds the wall clock also counts the time other
//! processes hold the core; the CPU time does not, so it is the figure to compare.
//!
//! Run: `cargo bench --bench handshake -- --warm-up-time 1 --measurement-time 3`
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use wsgate::limits::Limits;
use wsgate::proto::handshake::{self, HandshakeConfig, parse_request};

const CHROME: &[u8] = handshake::SAMPLE_CHROME_REQUEST;

const KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";

fn config() -> HandshakeConfig {
    HandshakeConfig {
        paths: vec!["/ws".into()],
        allowed_origins: vec!["https://chat.example.com".into()],
        subprotocols: vec!["chat.v2".into(), "chat.v1".into()],
    }
}

/// On-CPU time of the calling thread so far (Linux: the first field of
/// `/proc/thread-self/schedstat`, in nanoseconds).
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Runs `routine` `iters` times and returns the CPU time it took, or the wall time
/// where the CPU time cannot be read.
fn cpu_timed(iters: u64, mut routine: impl FnMut()) -> Duration {
    let wall = Instant::now();
    let cpu = thread_cpu_time();
    for _ in 0..iters {
        routine();
    }
    match (cpu, thread_cpu_time()) {
        (Some(start), Some(end)) => end.saturating_sub(start),
        _ => wall.elapsed(),
    }
}

fn bench_handshake(c: &mut Criterion) {
    let limits = Limits::default();
    let cfg = config();
    // The caller's write buffer, reused across connections as a shard would.
    let mut out = Vec::with_capacity(256);
    // The whole accept path: parse, validate, accept key (inside write_response), 101.
    let accept = |out: &mut Vec<u8>| {
        out.clear();
        let request = parse_request(black_box(CHROME), &limits, &cfg)
            .expect("the sample is valid")
            .expect("the sample is complete");
        request.write_response(out);
        black_box(&out);
    };

    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Bytes(CHROME.len() as u64));
    group.bench_function("parse_request", |b| {
        b.iter(|| parse_request(black_box(CHROME), &limits, &cfg))
    });
    group.bench_function("parse_accept_respond", |b| b.iter(|| accept(&mut out)));
    group.bench_function("accept_key", |b| b.iter(|| handshake::accept_key(black_box(KEY))));
    group.finish();

    // The same routines by CPU time. The kernel updates a running thread's CPU time at
    // scheduler ticks, so every sample must span many ticks: flat sampling gives each
    // of them the same, long run instead of criterion's short-to-long ramp.
    let mut group = c.benchmark_group("handshake_cpu");
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function("parse_request", |b| {
        b.iter_custom(|iters| {
            cpu_timed(iters, || {
                black_box(parse_request(black_box(CHROME), &limits, &cfg)).ok();
            })
        })
    });
    group.bench_function("parse_accept_respond", |b| {
        b.iter_custom(|iters| cpu_timed(iters, || accept(&mut out)))
    });
    group.bench_function("accept_key", |b| {
        b.iter_custom(|iters| {
            cpu_timed(iters, || {
                black_box(handshake::accept_key(black_box(KEY)));
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench_handshake);
criterion_main!(benches);
