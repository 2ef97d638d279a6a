//! Unmasking speed: the fast path against the byte-at-a-time reference, at the sizes of
//! a short chat frame (16 and 128 bytes), a typical large message (1 KiB) and a bulk
//! frame (64 KiB, more than L1 holds). Throughput is in payload bytes, so criterion
//! prints GiB/s.
//!
//! `cargo bench --bench mask -- --warm-up-time 1 --measurement-time 2`
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use wsgate::proto::mask::{apply_mask, apply_mask_reference};

const SIZES: [usize; 4] = [16, 128, 1024, 64 * 1024];

/// The key from the RFC 6455 example: its four bytes differ, as in real traffic.
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        // A payload follows a 2- to 14-byte header in the read buffer, so it rarely
        // starts on an aligned address: start 1 byte in.
        let mut buf = vec![0x5a_u8; size + 1];
        group.bench_function(BenchmarkId::new("apply_mask", size), |b| {
            b.iter(|| apply_mask(black_box(&mut buf[1..]), black_box(KEY), black_box(1)));
        });
        group.bench_function(BenchmarkId::new("reference", size), |b| {
            b.iter(|| apply_mask_reference(black_box(&mut buf[1..]), black_box(KEY), black_box(1)));
        });
    }
    group.finish();
}

criterion_group!(benches, mask);
criterion_main!(benches);
