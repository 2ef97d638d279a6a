//! Cross-core ring throughput: one producer thread and one consumer thread, pinned to
//! CPUs 0 and 1, moving messages through the mesh `Endpoint` (glommio's SPSC queue, the
//! outbox policy, a doorbell per flush).
//!
//! - `u64`: the bare cost of the ring and the endpoint around it.
//! - `to_room`: a `MeshMsg::ToRoom` as a room publish sends it (a shared room key and a
//!   shared 64-byte frame: two reference counts per message), dropped by the consumer.
//! - `burst_64`: the producer flushes (rings the doorbell) every 64 messages, as a shard
//!   turn does; the others flush every 1024.
//!
//! - `fanout/publish_10k_local`: the sans-IO core alone: one publish from a client frame
//!   to 10,000 members on the owner's own shard (parse, sequence, store, encode once,
//!   one `Output::Send` per member sharing the frame). Throughput is in deliveries.
//!
//! The doorbell here only counts (the server's rings a socketpair: one `send(2)` per peer
//! per turn, amortised over the turn's messages). Each iteration batch spawns the two
//! threads, so the figure includes a thread start per batch; criterion's batches are
//! large enough (millions of messages) for that to vanish.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wsgate::auth::{Carrier, Identity};
use wsgate::msg::core::{MsgShard, Output};
use wsgate::msg::mesh::{self, Class, Doorbell, Endpoint, MeshMsg};
use wsgate::msg::protocol::{Encoding, FrameKind};
use wsgate::msg::{ConnId, MsgLimits};
use wsgate::proto::frame::SharedFrame;

/// Pins the calling thread to `cpu` (best effort: a machine with fewer CPUs runs the
/// bench unpinned).
fn pin(cpu: usize) {
    // SAFETY: `set` is a plain bit set on the stack, initialised by CPU_ZERO; the call
    // only reads it. The result is ignored on purpose (unpinned is still a valid run).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn pair<T: Send>(depth: usize) -> (Endpoint<T>, Endpoint<T>, Arc<AtomicUsize>) {
    let rung = Arc::new(AtomicUsize::new(0));
    let counter = rung.clone();
    let bell: Arc<dyn Doorbell> = Arc::new(move || {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let mut eps = mesh::build::<T>(vec![bell.clone(), bell], depth, Duration::from_secs(3600));
    let b = eps.pop().unwrap();
    let a = eps.pop().unwrap();
    (a, b, rung)
}

/// Moves `n` messages made by `make` from CPU 0 to CPU 1 and returns the time taken.
fn run<T: Send + Class + 'static>(
    n: u64,
    depth: usize,
    flush_every: u64,
    make: impl Fn(u64) -> T + Send + 'static,
) -> Duration {
    let (mut producer, mut consumer, _rung) = pair::<T>(depth);
    let start = Arc::new(std::sync::Barrier::new(2));
    let go = start.clone();
    let reader = std::thread::spawn(move || {
        pin(1);
        go.wait();
        let mut got = 0u64;
        while got < n {
            let taken = consumer.recv(usize::MAX, |_, msg| {
                black_box(msg);
            });
            if taken == 0 {
                std::hint::spin_loop();
            }
            got += taken as u64;
        }
        Instant::now()
    });
    pin(0);
    start.wait();
    let t0 = Instant::now();
    let mut shed = Vec::new();
    let mut i = 0u64;
    while i < n {
        let now = t0; // the wait bound is an hour: nothing expires, no clock reads
        match producer.send(1, make(i), now) {
            Ok(()) => i += 1,
            Err(_) => producer.flush(now, &mut shed),
        }
        if i.is_multiple_of(flush_every) {
            producer.flush(now, &mut shed);
        }
    }
    while producer.pending() > 0 {
        producer.flush(t0, &mut shed);
    }
    let end = reader.join().unwrap();
    assert!(shed.is_empty());
    end - t0
}

fn mesh_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("mesh");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("u64", |b| b.iter_custom(|iters| run(iters, 4096, 1024, |i| i)));
    group.bench_function("u64_burst_64", |b| b.iter_custom(|iters| run(iters, 4096, 64, |i| i)));
    let room: wsgate::msg::Key = "lobby".into();
    let frame = SharedFrame::text(&"x".repeat(62));
    group.bench_function("to_room", |b| {
        b.iter_custom(|iters| {
            let room = room.clone();
            let frame = frame.clone();
            run(iters, 4096, 1024, move |_| MeshMsg::ToRoom {
                room: room.clone(),
                frame: frame.clone(),
                exclude: None,
                watchers_only: false,
            })
        })
    });
    group.finish();
}

fn fanout(c: &mut Criterion) {
    const MEMBERS: u64 = 10_000;
    let limits = MsgLimits::default();
    let now = Instant::now();
    let mut shard = MsgShard::new(0, 1, &limits, 1);
    for i in 0..MEMBERS {
        let identity = Identity {
            user_id: format!("user-{i}"),
            can_join: None,
            can_publish: None,
            expires_at: None,
            carrier: Carrier::Anonymous,
            generated: false,
        };
        shard.handle_connect(ConnId::new(i as u32, 0), &identity, Encoding::Json, now);
        shard.handle_client_frame(
            ConnId::new(i as u32, 0),
            FrameKind::Text,
            br#"{"type":"join","room":"hot"}"#,
            now,
        );
    }
    while shard.poll_output().is_some() {}
    let publish = br#"{"type":"publish","room":"hot","id":"p","body":{"text":"hello, room"}}"#;
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(MEMBERS));
    group.sample_size(20);
    group.bench_function("publish_10k_local", |b| {
        b.iter(|| {
            shard.handle_client_frame(ConnId::new(0, 0), FrameKind::Text, publish, now);
            let mut n = 0u64;
            while let Some(out) = shard.poll_output() {
                if let Output::Send { frame, .. } = out {
                    black_box(&frame);
                    n += 1;
                }
            }
            assert_eq!(n, MEMBERS + 1, "every member and the ack");
        })
    });
    group.finish();
}

criterion_group!(benches, mesh_throughput, fanout);
criterion_main!(benches);
