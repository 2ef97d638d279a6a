//! Small-frame decode and encode: the per-message cost of the protocol core.
//!
//! `decode_header` alone; `Connection::handle_input` on a whole 32-byte masked text
//! frame (header, unmask, UTF-8 check, event: what the server does per chat message);
//! header encoding, a frame into a reused buffer, and a `SharedFrame` (one allocation).

use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use wsgate::limits::Limits;
use wsgate::proto::connection::{Connection, Event};
use wsgate::proto::frame::{OpCode, Role, SharedFrame, decode_header, encode_frame, encode_header};

fn masked_text(len: usize) -> Vec<u8> {
    let payload = "x".repeat(len);
    let mut out = Vec::new();
    encode_frame(&mut out, true, OpCode::Text, payload.as_bytes(), Some([1, 2, 3, 4]));
    out
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    let frame = masked_text(32);
    group.throughput(Throughput::Elements(1));
    group.bench_function("header_32B", |b| {
        b.iter(|| {
            decode_header(black_box(&frame), Role::Server, 1 << 20)
                .unwrap()
                .unwrap()
        })
    });
    let limits = Limits::default();
    for len in [32usize, 512] {
        let frame = masked_text(len);
        let now = Instant::now();
        let mut conn = Connection::new(Role::Server, now);
        group.bench_function(format!("handle_input_text_{len}B"), |b| {
            b.iter_batched_ref(
                || frame.clone(),
                |input| {
                    let (used, event) = conn.handle_input(now, &limits, input);
                    match event {
                        Some(Event::Message(m)) => black_box((used, m.as_bytes().len())),
                        _ => unreachable!(),
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("header", |b| {
        b.iter(|| encode_header(true, OpCode::Text, black_box(32), None))
    });
    let payload = [b'x'; 32];
    let mut out = Vec::with_capacity(256);
    group.bench_function("frame_32B_into_vec", |b| {
        b.iter(|| {
            out.clear();
            encode_frame(&mut out, true, OpCode::Text, black_box(&payload), None);
            out.len()
        })
    });
    group.bench_function("shared_frame_32B", |b| {
        b.iter(|| SharedFrame::binary(black_box(&payload)))
    });
    let shared = SharedFrame::binary(&payload);
    group.bench_function("shared_frame_clone", |b| b.iter(|| black_box(&shared).clone()));
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
