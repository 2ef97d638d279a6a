//! Per-shard counters and the Prometheus text they are rendered into.
//!
//! Each shard owns a [`ShardMetrics`] and bumps plain integers in it on its hot path (no
//! atomics, no sharing). Once per timer tick the shard copies it into its slot of the
//! [`Registry`]; a scrape of `/metrics` reads those copies, so a figure is at most one
//! tick old and the hot path never waits on a reader.
#![forbid(unsafe_code)]

use std::sync::Mutex;

use hashbrown::HashMap;

/// The counters and gauges of one shard.
#[derive(Clone, Debug, Default)]
pub struct ShardMetrics {
    /// Gauge: upgraded connections open now.
    pub connections: u64,
    /// Gauge: connections in the HTTP handshake now.
    pub handshakes_in_progress: u64,
    /// Connections accepted by the listener.
    pub accepted: u64,
    /// Upgrades completed (101 sent).
    pub upgrades: u64,
    /// Handshakes refused, by reason label (a `HandshakeError` label, or
    /// `connection_limit`, `handshake_limit`, `handshake_timeout`, `draining`).
    pub handshake_failures: HashMap<&'static str, u64>,
    /// Frames received (data and control).
    pub frames_in: u64,
    /// Frames sent (data and control).
    pub frames_out: u64,
    /// Data messages received.
    pub messages_in: u64,
    /// Data messages queued for sending.
    pub messages_out: u64,
    /// Bytes read from sockets (after the handshake included).
    pub bytes_in: u64,
    /// Bytes written to sockets.
    pub bytes_out: u64,
    /// Close frames sent, by close code.
    pub close_codes_sent: HashMap<u16, u64>,
    /// Close frames received, by close code (1005 for a close with no code).
    pub close_codes_received: HashMap<u16, u64>,
    /// Protocol errors by the peer, by `ProtocolError` label.
    pub protocol_errors: HashMap<&'static str, u64>,
    /// Connections closed by the slow-consumer policy.
    pub slow_consumer_closes: u64,
    /// Gauge: bytes queued for sending on all connections of the shard.
    pub queued_bytes: u64,
    /// Heartbeat timeouts (peer silent for the idle timeout).
    pub heartbeat_timeouts: u64,
    /// Close handshakes that timed out.
    pub close_timeouts: u64,
    /// Handshakes that did not complete within the handshake deadline.
    pub handshake_timeouts: u64,
    /// Connections that ended without a close handshake (EOF or reset).
    pub abnormal_closes: u64,
    /// Connections closed, any way.
    pub closed: u64,
}

impl ShardMetrics {
    /// Counts one more of `label` in a labelled counter.
    pub fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u64>, label: K) {
        *map.entry(label).or_insert(0) += 1;
    }
}

/// Where shards publish their metrics for the admin listener.
#[derive(Debug)]
pub struct Registry {
    shards: Vec<Mutex<ShardMetrics>>,
}

impl Registry {
    /// A registry with one slot per shard.
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards).map(|_| Mutex::new(ShardMetrics::default())).collect(),
        }
    }

    /// Replaces shard `shard`'s published copy.
    pub fn publish(&self, shard: usize, metrics: &ShardMetrics) {
        let mut slot = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        slot.clone_from(metrics);
    }

    /// A copy of every shard's latest published metrics, in shard order.
    pub fn snapshot(&self) -> Vec<ShardMetrics> {
        self.shards
            .iter()
            .map(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }
}
