//! The disk store's recovery, CPU side: 1,000,000 journal records (inbox messages of
//! ~120-byte bodies to 10,000 users, each queued offline, as a busy day leaves them)
//! read back by `Recovery::feed`, resolved by `finish` and loaded into the store, which
//! is what `server::journal::recover` does after reading the segment files (reading the
//! files themselves is a sequential read from the page cache or the disk on top).
//!
//! - `recover_1m`: feed + finish + load. The issue's target: under 2 s for 1M records.
//! - `encode_1m`: the same records appended through the durable store (CRC32C and
//!   encoding on the owner's path), for scale.
//!
//! The bench runs on mimalloc, as the binary does.
//!
//! Under `cargo test --benches` (no `--bench` argument) the count is 10,000, so the
//! test run stays fast in a debug build.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wsgate::msg::journal::{Recovery, WallClock};
use wsgate::msg::store::{LogKey, MemStore, Record, Sender, Store};
use wsgate::msg::{MsgLimits, Position};
use wsgate::proto::frame::SharedFrame;

// The gateway's allocator: recovery is allocation-heavy (a frame and a record per
// message), so the system allocator would measure something the binary does not run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USERS: usize = 10_000;

fn records() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        10_000
    }
}

fn limits() -> MsgLimits {
    MsgLimits {
        history_max_messages: 1_000,
        offline_max_messages: 1_000,
        ..MsgLimits::default()
    }
}

/// The journal a durable store writes for `n` messages, and its clock.
fn journal(n: usize) -> (Vec<u8>, WallClock) {
    let now = Instant::now();
    let clock = WallClock::new(now, SystemTime::now());
    let mut store = MemStore::durable(&limits(), 0, clock);
    let users: Vec<wsgate::msg::Key> = (0..USERS).map(|u| format!("user{u}").into()).collect();
    let mut seqs = vec![0u64; USERS];
    for i in 0..n {
        let u = i % USERS;
        let inbox = LogKey::Inbox(users[u].clone());
        if seqs[u] == 0 {
            store.start_position(
                &inbox,
                Position {
                    epoch: 1 + u as u64,
                    seq: 0,
                },
            );
        }
        seqs[u] += 1;
        let text = format!(
            r#"{{"type":"msg","from":"sender{}","seq":{},"body":{{"text":"message {i} with a body of about a tweet's length"}}}}"#,
            i % 977,
            seqs[u]
        );
        let record = Record {
            seq: seqs[u],
            at: now,
            frame: SharedFrame::text(&text),
            sender: Some(Sender {
                user: format!("sender{}", i % 977).into(),
                id: None,
            }),
            acked: false,
        };
        store.offline_push(&users[u], record.clone(), now);
        store.append(&inbox, record, now);
    }
    let bytes = store.journal_mut().expect("durable").encoder.take(Vec::new());
    (bytes, clock)
}

fn recover(c: &mut Criterion) {
    let n = records();
    let (bytes, clock) = journal(n);
    let mut group = c.benchmark_group("journal");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(if n == 1_000_000 { "recover_1m" } else { "recover_10k" }, |b| {
        // The rebuilt store is dropped outside the timing (a process keeps it).
        b.iter_with_large_drop(|| {
            let mut recovery = Recovery::new();
            assert_eq!(recovery.feed(&bytes).good, bytes.len());
            let (logs, read) = recovery.finish(&clock);
            let mut store = MemStore::durable(&limits(), bytes.len() as u64, clock);
            let loaded = store.load(logs, Instant::now());
            black_box((read, loaded));
            store
        });
    });
    group.bench_function(if n == 1_000_000 { "encode_1m" } else { "encode_10k" }, |b| {
        b.iter(|| black_box(journal(n).0.len()));
    });
    group.finish();
    eprintln!(
        "journal: {n} records, {} bytes ({} bytes per record)",
        bytes.len(),
        bytes.len() / n
    );
}

criterion_group!(benches, recover);
criterion_main!(benches);
