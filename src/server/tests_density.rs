//! What an idle connection costs on its shard's heap, measured with the counting
//! allocator on the shard threads (shared-nothing: a connection's state is allocated
//! there), and held to a budget so that a change that makes every connection heavier
//! fails here rather than in the next density run.
//!
//! The slot itself (96 bytes, asserted in `server::shard`) sits in the slab the shard
//! reserves at start, so it is not in these figures; the README's density section adds
//! it and the kernel's share.
use std::time::Duration;

use super::tests::{Client, TestServer};
use super::tests_crash::Peer;
use crate::edge::EdgeConfig;

/// Connections in each measurement: enough that table growth is amortised (the
/// figures move by a few bytes between 4,000 and 9,000), few enough for the test
/// process's 20,000 open files (each connection is two).
const CONNECTIONS: usize = 8000;

/// Heap bytes per idle connection on the shards (two), every connection a user of its
/// own; edge limits at their defaults except the upgrade rate per address (everything
/// here comes from 127.0.0.1).
fn heap_per_connection(echo: bool) -> f64 {
    let server = TestServer::start(|cfg| {
        cfg.shards = 2;
        cfg.echo = echo;
        cfg.max_connections = CONNECTIONS * 2;
        cfg.max_handshakes_per_shard = CONNECTIONS;
        cfg.edge = EdgeConfig {
            upgrade_rate_per_ip: 0,
            ..EdgeConfig::default()
        };
    });
    let connect = |i: usize| -> Box<dyn std::any::Any> {
        if echo {
            Box::new(Client::connect(server.addr))
        } else {
            Box::new(Peer::connect(server.addr, &format!("user-{i:06}")).expect("connects").0)
        }
    };
    // Warm-up: one-time tables and buffers exist before the baseline.
    drop(connect(CONNECTIONS));
    server.wait_for("the warm-up connection closed", |m| m.connections == 0);
    server.wait_for_shard_time(Duration::from_millis(200));
    let before = server.metrics().test_heap_bytes;
    let held: Vec<_> = (0..CONNECTIONS).map(connect).collect();
    server.wait_for("every connection open", |m| m.connections == CONNECTIONS as u64);
    server.wait_for_shard_time(Duration::from_millis(200));
    let after = server.metrics().test_heap_bytes;
    drop(held);
    (after - before) as f64 / CONNECTIONS as f64
}

#[test]
fn an_idle_connection_stays_within_its_heap_budget() {
    let echo = heap_per_connection(true);
    let messaging = heap_per_connection(false);
    eprintln!("heap per idle connection beyond the slot: echo {echo:.1} B, messaging {messaging:.1} B");
    // The terminator: wheel entries and table slack only.
    assert!(echo <= 32.0, "echo: {echo:.1} B per connection");
    // Messaging, one user per connection: the local record (32 B) and its share of the
    // user index, the owner's entry in its dense table (48 B) and index, the user id
    // (a triomphe Arc<str>: 8 B and the id), and each table's growth slack (a chunk per
    // table, the indexes' load factor). Measured 134 B; 181-182 B with the edge's own
    // per-user table beside the owner's directory, 220-225 B with doubling vectors, a
    // 64-byte owner entry and std's Arc; 508 B before the tables were dense.
    assert!(messaging <= 150.0, "messaging: {messaging:.1} B per connection");
}
