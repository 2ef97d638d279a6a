//! UTF-8 validation speed of text messages, ASCII and mixed-script, at the size of a
//! chat message (128 B), a large message (4 KiB) and a bulk one (64 KiB).
//!
//! Side by side for each input:
//! - `validate`: what the crate uses for a whole message (simdutf8's `basic` API);
//! - `std`: `std::str::from_utf8`, the baseline;
//! - `simdutf8_compat`: simdutf8's API that also locates the error, to show what the
//!   incremental validator saves by not needing it;
//! - `feed_4k`: `Utf8Validator` fed in 4 KiB pieces, then `finish`. In mixed text the
//!   piece boundaries fall inside code points, so the carry path is timed too.
//!
//! Throughput is in input bytes, so criterion prints GiB/s.
//!
//! `cargo bench --bench utf8 -- --warm-up-time 1 --measurement-time 2`
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use wsgate::proto::utf8::{Utf8Validator, validate};

const SIZES: [usize; 3] = [128, 4 * 1024, 64 * 1024];
const PIECE_LEN: usize = 4 * 1024;

const ASCII_SAMPLE: &str = "The quick brown fox jumps over the lazy dog; {\"type\":\"msg\",\"id\":42} ";
/// Latin, Cyrillic, CJK and emoji: 1- to 4-byte code points, as in a busy chat room.
const MIXED_SAMPLE: &str = "Hi! Привет, как дела? 你好，今天怎么样？ こんにちは 😀🎉👍 ok ";

/// `sample` repeated to `len` bytes, cut at a code point boundary and padded with
/// spaces, so that the text is valid and exactly `len` bytes long.
fn text(sample: &str, len: usize) -> Vec<u8> {
    let mut text = sample.repeat(len / sample.len() + 1);
    let mut end = len;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    let mut bytes = text.into_bytes();
    bytes.resize(len, b' ');
    bytes
}

fn utf8(c: &mut Criterion) {
    for (name, sample) in [("ascii", ASCII_SAMPLE), ("mixed", MIXED_SAMPLE)] {
        let mut group = c.benchmark_group(format!("utf8/{name}"));
        for size in SIZES {
            let input = text(sample, size);
            assert!(std::str::from_utf8(&input).is_ok());
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(BenchmarkId::new("validate", size), &input, |b, input| {
                b.iter(|| validate(black_box(input)).is_ok());
            });
            group.bench_with_input(BenchmarkId::new("std", size), &input, |b, input| {
                b.iter(|| std::str::from_utf8(black_box(input)).is_ok());
            });
            group.bench_with_input(BenchmarkId::new("simdutf8_compat", size), &input, |b, input| {
                b.iter(|| simdutf8::compat::from_utf8(black_box(input)).is_ok())
            });
            group.bench_with_input(BenchmarkId::new("feed_4k", size), &input, |b, input| {
                b.iter(|| {
                    let mut validator = Utf8Validator::default();
                    for piece in black_box(input).chunks(PIECE_LEN) {
                        validator.feed(piece).unwrap();
                    }
                    validator.finish().is_ok()
                });
            });
        }
        group.finish();
    }
}

criterion_group!(benches, utf8);
criterion_main!(benches);
