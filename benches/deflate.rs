//! permessage-deflate speed (RFC 7692, no context takeover): one chat JSON message
//! compressed, and inflated, on its own, at 100 B (a chat line), 1 KiB (a rich message)
//! and 16 KiB (a page of history), to choose the level and the backend.
//!
//! `deflate/compress/<size>`:
//! - `ours_l1`, `ours_l6`: `Deflater::compress` (flate2 on zlib-rs, sync flush, tail
//!   stripped) at levels 1 (the default) and 6 (zlib's default);
//! - `miniz_oxide_l1`: `miniz_oxide::deflate::compress_to_vec` (raw DEFLATE, a final
//!   block, a new `Vec` per message);
//! - `libdeflater_l1`: `libdeflater::Compressor::deflate_compress` into a preallocated
//!   buffer of `deflate_compress_bound` bytes.
//!
//! `deflate/inflate/<size>`: ours (`Inflater::inflate` of the message as it is sent,
//! not validated as text) against miniz_oxide's `decompress_to_vec` and libdeflater's
//! `Decompressor::deflate_decompress`, all three on the same bits: our level-1 output
//! with the stripped `00 00 ff ff` and an empty final block (`03 00`) put back, since
//! the other two want a complete stream.
//!
//! The other two are a comparison, not candidates. libdeflate compresses a whole buffer
//! into a final block (no sync flush, no streaming), always with a 32 KiB window (it
//! cannot honour `server_max_window_bits`), and inflates only a complete stream into
//! one buffer, so the only bound on inflated output is that buffer's size (allocated
//! up front at `--max-message-bytes`, per message). miniz_oxide has no window-size
//! setting either. Their compressed sizes differ a little from ours (a final block, not
//! a sync flush and its stripped tail).
//!
//! Throughput is in message bytes: input for compress, output for inflate. The setup
//! prints each compressed size and its ratio to stderr once.
//!
//! `cargo bench --bench deflate -- --warm-up-time 1 --measurement-time 2`
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flate2::Compression;
use libdeflater::{CompressionLvl, Compressor, Decompressor};
use std::hint::black_box;
use wsgate::proto::deflate::{Deflater, Inflater};

const SIZES: [usize; 3] = [100, 1024, 16 * 1024];
const WINDOW_BITS: u8 = 15;

const WORDS: [&str; 48] = [
    "hey", "anyone", "seen", "the", "new", "build", "deploy", "failed", "again", "on", "staging", "lol", "ok", "I'll",
    "check", "logs", "after", "lunch", "meeting", "moved", "to", "3pm", "can", "you", "review", "my", "PR", "#4821",
    "thanks!", "latency", "spiked", "around", "noon", "😅", "rollback", "done", "sure", "why", "not", "it's", "fixed",
    "now", "weekend", "plans?", "coffee", "☕", "brb", "gg",
];
const USERS: [&str; 6] = ["user-123", "user-77", "alice", "bob_42", "user-9001", "carol"];

/// A small deterministic generator (an LCG), so every run compresses the same bytes.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % below as u64) as usize
    }
}

/// One chat message whose text, random words, makes it exactly `len` bytes (ASCII
/// padding after the last whole word), or as short as it can be.
fn message(rng: &mut Lcg, seq: u64, len: usize) -> String {
    let from = USERS[rng.next(USERS.len())];
    let head = format!(r#"{{"type":"room_msg","room":"lobby","seq":{seq},"from":"{from}","body":{{"text":""#);
    let tail = r#""}}"#;
    let room = len.saturating_sub(head.len() + tail.len());
    let mut text = String::new();
    loop {
        let word = WORDS[rng.next(WORDS.len())];
        if text.len() + word.len() + 1 > room {
            break;
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(word);
    }
    while text.len() < room {
        text.push('.');
    }
    format!("{head}{text}{tail}")
}

/// A payload of exactly `size` bytes: one message up to 1 KiB, else a JSON array of
/// messages of 120 to 600 bytes (a history page), the last one sized to fit.
fn payload(size: usize) -> Vec<u8> {
    let mut rng = Lcg(size as u64);
    let mut seq = 1000;
    if size <= 1024 {
        return message(&mut rng, seq, size).into_bytes();
    }
    let mut out = String::from("[");
    loop {
        if out.len() > 1 {
            out.push(',');
        }
        let left = size - out.len() - 1; // the closing ']'
        let want = 120 + rng.next(480);
        // The last message when another after this one would be under 120 bytes.
        let last = left < want + 1 + 120;
        out.push_str(&message(&mut rng, seq, if last { left } else { want }));
        if last {
            break;
        }
        seq += 1;
    }
    out.push(']');
    assert_eq!(out.len(), size);
    assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
    out.into_bytes()
}

fn ours(level: u32, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    assert!(Deflater::new(Compression::new(level)).compress(input, WINDOW_BITS, &mut out));
    out
}

fn libdeflate(level: i32, input: &[u8]) -> Vec<u8> {
    let mut compressor = Compressor::new(CompressionLvl::new(level).unwrap());
    let mut out = vec![0; compressor.deflate_compress_bound(input.len())];
    let len = compressor.deflate_compress(input, &mut out).unwrap();
    out.truncate(len);
    out
}

fn report_sizes(size: usize, input: &[u8]) {
    let mut line = format!("deflate ratios {size} B:");
    for level in [1, 6] {
        let sizes = [
            ("ours", ours(level, input).len()),
            (
                "miniz_oxide",
                miniz_oxide::deflate::compress_to_vec(input, level as u8).len(),
            ),
            ("libdeflater", libdeflate(level as i32, input).len()),
        ];
        for (name, len) in sizes {
            line += &format!(" {name}_l{level} {len} B ({:.3})", len as f64 / size as f64);
        }
    }
    eprintln!("{line}");
}

fn compress(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate/compress");
    for size in SIZES {
        let input = payload(size);
        report_sizes(size, &input);
        group.throughput(Throughput::Bytes(size as u64));
        for level in [1, 6] {
            let mut deflater = Deflater::new(Compression::new(level));
            let mut out = Vec::with_capacity(size + 64);
            group.bench_with_input(BenchmarkId::new(format!("ours_l{level}"), size), &input, |b, input| {
                b.iter(|| {
                    out.clear();
                    deflater.compress(black_box(input), WINDOW_BITS, &mut out)
                });
            });
        }
        group.bench_with_input(BenchmarkId::new("miniz_oxide_l1", size), &input, |b, input| {
            b.iter(|| miniz_oxide::deflate::compress_to_vec(black_box(input), 1));
        });
        let mut compressor = Compressor::new(CompressionLvl::new(1).unwrap());
        let mut out = vec![0; compressor.deflate_compress_bound(size)];
        group.bench_with_input(BenchmarkId::new("libdeflater_l1", size), &input, |b, input| {
            b.iter(|| compressor.deflate_compress(black_box(input), &mut out).unwrap());
        });
    }
    group.finish();
}

fn inflate(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate/inflate");
    for size in SIZES {
        let input = payload(size);
        let message = ours(1, &input);
        // The same bits as a complete raw DEFLATE stream: the tail and a final block.
        let mut stream = message.clone();
        stream.extend_from_slice(&[0x00, 0x00, 0xff, 0xff, 0x03, 0x00]);
        assert_eq!(miniz_oxide::inflate::decompress_to_vec(&stream).unwrap(), input);
        group.throughput(Throughput::Bytes(size as u64));

        let mut inflater = Inflater::default();
        let mut out = Vec::with_capacity(size);
        inflater.inflate(&message, false, 1 << 20, &mut out).unwrap();
        assert_eq!(out, input);
        group.bench_with_input(BenchmarkId::new("ours", size), &message, |b, message| {
            b.iter(|| inflater.inflate(black_box(message), false, 1 << 20, &mut out).unwrap());
        });
        group.bench_with_input(BenchmarkId::new("miniz_oxide", size), &stream, |b, stream| {
            b.iter(|| miniz_oxide::inflate::decompress_to_vec(black_box(stream)).unwrap());
        });
        let mut decompressor = Decompressor::new();
        let mut out = vec![0; size];
        assert_eq!(decompressor.deflate_decompress(&stream, &mut out).unwrap(), size);
        group.bench_with_input(BenchmarkId::new("libdeflater", size), &stream, |b, stream| {
            b.iter(|| decompressor.deflate_decompress(black_box(stream), &mut out).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, compress, inflate);
criterion_main!(benches);
