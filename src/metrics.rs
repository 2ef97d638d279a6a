//! Per-shard counters and the Prometheus text they are rendered into.
//!
//! Each shard owns a [`ShardMetrics`] and bumps plain integers in it on its hot path (no
//! atomics, no sharing). Once per timer tick the shard copies it into its slot of the
//! [`Registry`]; a scrape of `/metrics` reads those copies, so a figure is at most one
//! tick old and the hot path never waits on a reader. [`render`] turns the copies and a
//! few process facts ([`ProcessInfo`]) into the Prometheus text format.//!
//! # Why one long file
//!
//! Most of it is `FAMILIES`, the table of every exported metric (name, type, help, how to
//! read it), kept in one place so names and help texts are reviewed side by side, and the
//! exact-text test that pins the exposition format.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashMap;

/// A latency histogram with fixed buckets (Prometheus `le` bounds in seconds, each
/// count cumulative when rendered), plain integers like every other shard counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations at or below each bound of [`Histogram::BOUNDS`] (not cumulative).
    buckets: [u64; Histogram::BOUNDS.len()],
    /// Observations above the last bound.
    over: u64,
    /// Sum of the observations, in microseconds.
    sum_micros: u64,
}

impl Histogram {
    /// Upper bounds in seconds: 50 µs to 1 s, about three per decade (an fsync of a
    /// small append takes 0.1-2 ms on an SSD, tens of ms on a disk or a busy device).
    pub const BOUNDS: [f64; 13] = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    ];

    /// Counts one observation.
    pub fn observe(&mut self, took: std::time::Duration) {
        let seconds = took.as_secs_f64();
        match Self::BOUNDS.iter().position(|&b| seconds <= b) {
            Some(i) => self.buckets[i] += 1,
            None => self.over += 1,
        }
        self.sum_micros += took.as_micros() as u64;
    }

    /// Observations counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum::<u64>() + self.over
    }

    /// Adds `other`'s observations.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.over += other.over;
        self.sum_micros += other.sum_micros;
    }
}

/// The disk store's counters of one shard (`server::journal`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalMetrics {
    /// Bytes appended to segments.
    pub bytes_written: u64,
    /// Records encoded (messages, positions, acks, takes).
    pub records_written: u64,
    /// Writes (each a batch of whole records).
    pub writes: u64,
    /// `fdatasync` latencies (their count is the number of syncs).
    pub fsync_seconds: Histogram,
    /// Failed writes or syncs, each retried.
    pub write_errors: u64,
    /// Compactions finished.
    pub compactions: u64,
    /// Gauge: segment files.
    pub segments: u64,
    /// Gauge: bytes in segment files.
    pub disk_bytes: u64,
    /// Gauge: 1 while new messages are refused because the budget is spent.
    pub full: u64,
    /// Gauge: answers (acks, deliveries, API replies) waiting for the journal.
    pub held: u64,
    /// Records read intact at start.
    pub recovered_records: u64,
    /// Bytes read intact at start.
    pub recovered_bytes: u64,
    /// Bytes cut at start from torn or corrupt segment tails.
    pub recovery_cut_bytes: u64,
    /// Milliseconds the start-up recovery took.
    pub recovery_millis: u64,
}

impl JournalMetrics {
    /// Adds `other` (gauges summed too: the whole process's view).
    pub fn merge(&mut self, other: Self) {
        let Self {
            bytes_written,
            records_written,
            writes,
            fsync_seconds,
            write_errors,
            compactions,
            segments,
            disk_bytes,
            full,
            held,
            recovered_records,
            recovered_bytes,
            recovery_cut_bytes,
            recovery_millis,
        } = other;
        self.bytes_written += bytes_written;
        self.records_written += records_written;
        self.writes += writes;
        self.fsync_seconds.merge(&fsync_seconds);
        self.write_errors += write_errors;
        self.compactions += compactions;
        self.segments += segments;
        self.disk_bytes += disk_bytes;
        self.full += full;
        self.held += held;
        self.recovered_records += recovered_records;
        self.recovered_bytes += recovered_bytes;
        self.recovery_cut_bytes += recovery_cut_bytes;
        self.recovery_millis = self.recovery_millis.max(recovery_millis);
    }
}

/// The cluster side of one shard (`--redis`; all 0 without it): its Redis connection
/// (`cluster::RedisStats`) and its cluster owner (`cluster::owner::ClusterStats`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterMetrics {
    /// Gauge: 1 while the shard's Redis connection is up (handshaken).
    pub up: u64,
    /// Round trips (pipelined writes of queued commands).
    pub round_trips: u64,
    /// Commands written.
    pub commands: u64,
    /// Reconnects after the first connect.
    pub reconnects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Connections lost (I/O errors, EOF, bad replies, timeouts).
    pub errors: u64,
    /// Round trips that timed out.
    pub timeouts: u64,
    /// Batches refused because Redis was down or the outbox full.
    pub refused: u64,
    /// Pub/sub messages received.
    pub pushes: u64,
    /// Requests answered `unavailable` (clients) or 503 (API).
    pub unavailable: u64,
    /// Inbox messages requeued offline (the user left the node meanwhile).
    pub requeued: u64,
    /// Entries of a previous life of this node removed at start.
    pub cleaned: u64,
    /// Error replies from Redis.
    pub error_replies: u64,
    /// Messages pushed before a connect's welcome that did not fit the hand-over bound.
    pub early_dropped: u64,
    /// Gauge: live nodes this shard sees (itself included).
    pub live_nodes: u64,
}

impl ClusterMetrics {
    /// Adds `other` (gauges summed, except `live_nodes`: the largest view).
    pub fn merge(&mut self, other: Self) {
        let Self {
            up,
            round_trips,
            commands,
            reconnects,
            connect_failures,
            errors,
            timeouts,
            refused,
            pushes,
            unavailable,
            requeued,
            cleaned,
            error_replies,
            early_dropped,
            live_nodes,
        } = other;
        self.up += up;
        self.round_trips += round_trips;
        self.commands += commands;
        self.reconnects += reconnects;
        self.connect_failures += connect_failures;
        self.errors += errors;
        self.timeouts += timeouts;
        self.refused += refused;
        self.pushes += pushes;
        self.unavailable += unavailable;
        self.requeued += requeued;
        self.cleaned += cleaned;
        self.error_replies += error_replies;
        self.early_dropped += early_dropped;
        self.live_nodes = self.live_nodes.max(live_nodes);
    }
}

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
    /// Upgrade requests refused for their token, by `AuthError` label.
    pub auth_failures: HashMap<&'static str, u64>,
    /// Upgrades admitted, by where the token came from (`header`, `query`,
    /// `subprotocol`, `anonymous`).
    pub auth_accepted: HashMap<&'static str, u64>,
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
    /// permessage-deflate, by event: `negotiated` (upgrades that agreed it),
    /// `messages_out` / `bytes_out_plain` / `bytes_out_compressed` (messages we sent
    /// compressed, their sizes before and after), `not_smaller` (messages over
    /// `--compression-min-bytes` sent plain because deflate did not shrink them),
    /// `messages_in` / `bytes_in_compressed` / `bytes_in_plain` (messages inflated).
    pub compression: HashMap<&'static str, u64>,
    /// Edge limits hit, by limit (`upgrade_rate`, `connections_per_ip`,
    /// `connections_per_user`, `user_replaced`, `message_rate`, `ip_table_full`; see
    /// `crate::edge`).
    pub limit_hits: HashMap<&'static str, u64>,
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
    /// Messaging counters (`crate::msg`), copied from the shard's `MsgShard` each tick.
    pub msg: crate::msg::MsgMetrics,
    /// Gauge: users with a connection on this shard.
    pub msg_users: u64,
    /// Gauge: rooms with a member on this shard.
    pub msg_rooms: u64,
    /// Gauge: cross-shard messages waiting for room on a full ring.
    pub mesh_pending: u64,
    /// Gauge: users this shard owns that have a connection on any shard (summed over
    /// the shards: distinct users online, for `GET /api/stats`).
    pub msg_owned_users_online: u64,
    /// Gauge: rooms this shard owns that have a member (summed: distinct rooms).
    pub msg_owned_rooms: u64,
    /// Times the watchdog woke this shard after it slept through its ticks (glommio
    /// 0.9 can park an executor with runnable tasks; see `server::watchdog`). Should
    /// stay 0.
    pub watchdog_wakes: u64,
    /// Commands from other threads refused because the shard's inbox was full
    /// (`server::COMMAND_INBOX_CAPACITY`): API requests answered 503, evictions dropped.
    pub commands_refused: u64,
    /// Gauge: connections on the TLS listener now (handshaking, open or closing).
    pub tls_sessions: u64,
    /// TLS handshakes completed, by protocol version (`tls13`, `tls12`).
    pub tls_handshakes: HashMap<&'static str, u64>,
    /// TLS handshakes completed by resuming an earlier session (ticket or cache).
    pub tls_resumed: u64,
    /// TLS handshakes failed, by reason (`tls::SessionError` label, or `timeout`,
    /// `eof`, `too_large`, `after_handshake`).
    pub tls_handshake_failures: HashMap<&'static str, u64>,
    /// The disk store's journal (all 0 with `--store memory`).
    pub journal: JournalMetrics,
    /// The cluster side (all 0 without `--redis`).
    pub cluster: ClusterMetrics,
    /// Heap bytes live on the shard's thread. Known only in test builds (which count
    /// allocations per thread); 0 otherwise, and not rendered.
    #[doc(hidden)]
    pub test_heap_bytes: i64,
}

impl ShardMetrics {
    /// Adds `other` into `self`: counters and gauges summed, labelled counters summed
    /// by label (the whole-process view of per-shard figures). Every field is named, so
    /// a new one cannot be forgotten here.
    pub fn merge(&mut self, other: Self) {
        let Self {
            connections,
            handshakes_in_progress,
            accepted,
            upgrades,
            handshake_failures,
            auth_failures,
            auth_accepted,
            frames_in,
            frames_out,
            messages_in,
            messages_out,
            bytes_in,
            bytes_out,
            close_codes_sent,
            close_codes_received,
            protocol_errors,
            slow_consumer_closes,
            compression,
            limit_hits,
            queued_bytes,
            heartbeat_timeouts,
            close_timeouts,
            handshake_timeouts,
            abnormal_closes,
            closed,
            msg,
            msg_users,
            msg_rooms,
            mesh_pending,
            msg_owned_users_online,
            msg_owned_rooms,
            watchdog_wakes,
            commands_refused,
            tls_sessions,
            tls_handshakes,
            tls_resumed,
            tls_handshake_failures,
            journal,
            cluster,
            test_heap_bytes,
        } = other;
        self.journal.merge(journal);
        self.cluster.merge(cluster);
        self.connections += connections;
        self.handshakes_in_progress += handshakes_in_progress;
        self.accepted += accepted;
        self.upgrades += upgrades;
        for (k, v) in handshake_failures {
            *self.handshake_failures.entry(k).or_default() += v;
        }
        for (k, v) in auth_failures {
            *self.auth_failures.entry(k).or_default() += v;
        }
        for (k, v) in auth_accepted {
            *self.auth_accepted.entry(k).or_default() += v;
        }
        self.frames_in += frames_in;
        self.frames_out += frames_out;
        self.messages_in += messages_in;
        self.messages_out += messages_out;
        self.bytes_in += bytes_in;
        self.bytes_out += bytes_out;
        for (k, v) in close_codes_sent {
            *self.close_codes_sent.entry(k).or_default() += v;
        }
        for (k, v) in close_codes_received {
            *self.close_codes_received.entry(k).or_default() += v;
        }
        for (k, v) in protocol_errors {
            *self.protocol_errors.entry(k).or_default() += v;
        }
        self.slow_consumer_closes += slow_consumer_closes;
        for (k, v) in compression {
            *self.compression.entry(k).or_default() += v;
        }
        for (k, v) in limit_hits {
            *self.limit_hits.entry(k).or_default() += v;
        }
        self.queued_bytes += queued_bytes;
        self.heartbeat_timeouts += heartbeat_timeouts;
        self.close_timeouts += close_timeouts;
        self.handshake_timeouts += handshake_timeouts;
        self.abnormal_closes += abnormal_closes;
        self.closed += closed;
        self.msg.merge(msg);
        self.msg_users += msg_users;
        self.msg_rooms += msg_rooms;
        self.mesh_pending += mesh_pending;
        self.msg_owned_users_online += msg_owned_users_online;
        self.msg_owned_rooms += msg_owned_rooms;
        self.watchdog_wakes += watchdog_wakes;
        self.commands_refused += commands_refused;
        self.tls_sessions += tls_sessions;
        for (k, v) in tls_handshakes {
            *self.tls_handshakes.entry(k).or_default() += v;
        }
        self.tls_resumed += tls_resumed;
        for (k, v) in tls_handshake_failures {
            *self.tls_handshake_failures.entry(k).or_default() += v;
        }
        self.test_heap_bytes += test_heap_bytes;
    }

    /// Counts one more of `label` in a labelled counter.
    pub fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u64>, label: K) {
        *map.entry(label).or_insert(0) += 1;
    }
}

/// Where shards publish their metrics for the admin listener.
#[derive(Debug)]
pub struct Registry {
    shards: Vec<Mutex<ShardMetrics>>,
    /// Certificate reloads (SIGHUP) that took effect, and that failed (old kept).
    tls_reloads: [AtomicU64; 2],
}

impl Registry {
    /// A registry with one slot per shard.
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards).map(|_| Mutex::new(ShardMetrics::default())).collect(),
            tls_reloads: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Counts one certificate reload, successful or not (the main thread does it).
    pub fn count_tls_reload(&self, ok: bool) {
        self.tls_reloads[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// Certificate reloads so far: (took effect, failed).
    pub fn tls_reloads(&self) -> (u64, u64) {
        (
            self.tls_reloads[0].load(Ordering::Relaxed),
            self.tls_reloads[1].load(Ordering::Relaxed),
        )
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

/// Process-wide facts rendered next to the shard metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Resident memory (`crate::sys::rss_bytes`); `None` leaves the memory gauges out.
    pub rss_bytes: Option<u64>,
    /// Whether the process is draining (SIGTERM received).
    pub draining: bool,
    /// The soft open-files limit in force: the ceiling on connections.
    pub nofile_limit: u64,
    /// Configured shards.
    pub shards: usize,
    /// Certificate reloads (took effect, failed) when TLS is on; `None` leaves the
    /// family out.
    pub tls_reloads: Option<(u64, u64)>,
}

/// Prometheus metric type of a family.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// How a family's value is read from one shard.
enum Series {
    /// One sample per shard.
    Plain(fn(&ShardMetrics) -> u64),
    /// One sample per shard and label value: the label's name and the (value, count)
    /// pairs in a stable order.
    Labelled(&'static str, fn(&ShardMetrics) -> Vec<(String, u64)>),
    /// A histogram per shard: `_bucket{le=…}` (cumulative), `_sum` (seconds), `_count`.
    Histogram(fn(&ShardMetrics) -> &Histogram),
}

/// One metric family of the shard metrics: name, type, help and how to read it.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    series: Series,
}

/// A labelled counter's entries sorted by label (numerically for close codes), so the
/// output does not change order from scrape to scrape.
fn sorted<K: Ord + Copy + ToString>(map: &HashMap<K, u64>) -> Vec<(String, u64)> {
    let mut entries: Vec<(K, u64)> = map.iter().map(|(k, v)| (*k, *v)).collect();
    entries.sort_unstable_by_key(|(k, _)| *k);
    entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Every shard metric, in output order. Counters end in `_total`, byte figures in
/// `_bytes`, as Prometheus naming asks.
const FAMILIES: &[Family] = &[
    Family {
        name: "wsgate_connections",
        kind: Kind::Gauge,
        help: "Upgraded WebSocket connections open now.",
        series: Series::Plain(|m| m.connections),
    },
    Family {
        name: "wsgate_handshakes_in_progress",
        kind: Kind::Gauge,
        help: "Connections in the HTTP upgrade handshake now.",
        series: Series::Plain(|m| m.handshakes_in_progress),
    },
    Family {
        name: "wsgate_connections_accepted_total",
        kind: Kind::Counter,
        help: "TCP connections accepted by the listener.",
        series: Series::Plain(|m| m.accepted),
    },
    Family {
        name: "wsgate_upgrades_total",
        kind: Kind::Counter,
        help: "Handshakes completed with 101 Switching Protocols.",
        series: Series::Plain(|m| m.upgrades),
    },
    Family {
        name: "wsgate_handshake_failures_total",
        kind: Kind::Counter,
        help: "Handshakes refused, by reason.",
        series: Series::Labelled("reason", |m| sorted(&m.handshake_failures)),
    },
    Family {
        name: "wsgate_auth_failures_total",
        kind: Kind::Counter,
        help: "Upgrades refused with 401 for their token, by reason.",
        series: Series::Labelled("reason", |m| sorted(&m.auth_failures)),
    },
    Family {
        name: "wsgate_auth_accepted_total",
        kind: Kind::Counter,
        help: "Upgrades admitted, by where the token came from (a rising query share means tokens reach URL logs).",
        series: Series::Labelled("carrier", |m| sorted(&m.auth_accepted)),
    },
    Family {
        name: "wsgate_frames_received_total",
        kind: Kind::Counter,
        help: "Frames received, data and control.",
        series: Series::Plain(|m| m.frames_in),
    },
    Family {
        name: "wsgate_frames_sent_total",
        kind: Kind::Counter,
        help: "Frames sent, data and control.",
        series: Series::Plain(|m| m.frames_out),
    },
    Family {
        name: "wsgate_messages_received_total",
        kind: Kind::Counter,
        help: "Data messages received.",
        series: Series::Plain(|m| m.messages_in),
    },
    Family {
        name: "wsgate_messages_queued_total",
        kind: Kind::Counter,
        help: "Data messages queued for sending.",
        series: Series::Plain(|m| m.messages_out),
    },
    Family {
        name: "wsgate_received_bytes_total",
        kind: Kind::Counter,
        help: "Bytes read from sockets, handshakes included.",
        series: Series::Plain(|m| m.bytes_in),
    },
    Family {
        name: "wsgate_sent_bytes_total",
        kind: Kind::Counter,
        help: "Bytes written to sockets.",
        series: Series::Plain(|m| m.bytes_out),
    },
    Family {
        name: "wsgate_close_frames_sent_total",
        kind: Kind::Counter,
        help: "Close frames sent, by close code.",
        series: Series::Labelled("code", |m| sorted(&m.close_codes_sent)),
    },
    Family {
        name: "wsgate_close_frames_received_total",
        kind: Kind::Counter,
        help: "Close frames received, by close code (1005: no code).",
        series: Series::Labelled("code", |m| sorted(&m.close_codes_received)),
    },
    Family {
        name: "wsgate_protocol_errors_total",
        kind: Kind::Counter,
        help: "Protocol errors by peers, by error.",
        series: Series::Labelled("error", |m| sorted(&m.protocol_errors)),
    },
    Family {
        name: "wsgate_slow_consumer_closes_total",
        kind: Kind::Counter,
        help: "Connections closed because their send queue or the shard's send budget was full.",
        series: Series::Plain(|m| m.slow_consumer_closes),
    },
    Family {
        name: "wsgate_compression_total",
        kind: Kind::Counter,
        help: "permessage-deflate: upgrades that negotiated it, messages and bytes compressed and inflated.",
        series: Series::Labelled("event", |m| sorted(&m.compression)),
    },
    Family {
        name: "wsgate_edge_limit_hits_total",
        kind: Kind::Counter,
        help: "Edge limits hit (429 at the upgrade, 1008 after it, or an address let in uncounted), by limit.",
        series: Series::Labelled("limit", |m| sorted(&m.limit_hits)),
    },
    Family {
        name: "wsgate_send_queue_bytes",
        kind: Kind::Gauge,
        help: "Bytes queued for sending on all connections of the shard.",
        series: Series::Plain(|m| m.queued_bytes),
    },
    Family {
        name: "wsgate_heartbeat_timeouts_total",
        kind: Kind::Counter,
        help: "Connections closed because the peer was silent for the idle timeout.",
        series: Series::Plain(|m| m.heartbeat_timeouts),
    },
    Family {
        name: "wsgate_close_timeouts_total",
        kind: Kind::Counter,
        help: "Close handshakes the peer did not finish within the close timeout.",
        series: Series::Plain(|m| m.close_timeouts),
    },
    Family {
        name: "wsgate_handshake_timeouts_total",
        kind: Kind::Counter,
        help: "Handshakes not completed within the handshake timeout.",
        series: Series::Plain(|m| m.handshake_timeouts),
    },
    Family {
        name: "wsgate_abnormal_closes_total",
        kind: Kind::Counter,
        help: "Connections that ended without a close handshake (EOF or reset).",
        series: Series::Plain(|m| m.abnormal_closes),
    },
    Family {
        name: "wsgate_connections_closed_total",
        kind: Kind::Counter,
        help: "Connections closed, any way.",
        series: Series::Plain(|m| m.closed),
    },
    Family {
        name: "wsgate_shard_watchdog_wakes_total",
        kind: Kind::Counter,
        help: "Times the watchdog woke a shard that slept through its ticks.",
        series: Series::Plain(|m| m.watchdog_wakes),
    },
    Family {
        name: "wsgate_shard_commands_refused_total",
        kind: Kind::Counter,
        help: "Commands refused because the shard's inbox was full (API requests answered 503, evictions dropped).",
        series: Series::Plain(|m| m.commands_refused),
    },
    Family {
        name: "wsgate_msg_users",
        kind: Kind::Gauge,
        help: "Users with a connection on the shard (messaging).",
        series: Series::Plain(|m| m.msg_users),
    },
    Family {
        name: "wsgate_msg_owned_users_online",
        kind: Kind::Gauge,
        help: "Users owned by the shard with a connection on any shard (the sum over shards counts each user once).",
        series: Series::Plain(|m| m.msg_owned_users_online),
    },
    Family {
        name: "wsgate_msg_owned_rooms",
        kind: Kind::Gauge,
        help: "Rooms owned by the shard with at least one member (the sum over shards counts each room once).",
        series: Series::Plain(|m| m.msg_owned_rooms),
    },
    Family {
        name: "wsgate_msg_rooms",
        kind: Kind::Gauge,
        help: "Rooms with a member on the shard.",
        series: Series::Plain(|m| m.msg_rooms),
    },
    Family {
        name: "wsgate_msg_sends_total",
        kind: Kind::Counter,
        help: "User-to-user messages accepted by their owner (sequenced and stored).",
        series: Series::Plain(|m| m.msg.sends_accepted),
    },
    Family {
        name: "wsgate_msg_publishes_total",
        kind: Kind::Counter,
        help: "Room publishes accepted by their owner.",
        series: Series::Plain(|m| m.msg.publishes_accepted),
    },
    Family {
        name: "wsgate_msg_deliveries_total",
        kind: Kind::Counter,
        help: "Messaging frames handed to local connections (one per recipient connection).",
        series: Series::Plain(|m| m.msg.frames_delivered),
    },
    Family {
        name: "wsgate_mesh_sent_total",
        kind: Kind::Counter,
        help: "Cross-shard messages pushed onto rings.",
        series: Series::Plain(|m| m.msg.mesh_sent),
    },
    Family {
        name: "wsgate_mesh_received_total",
        kind: Kind::Counter,
        help: "Cross-shard messages taken off rings.",
        series: Series::Plain(|m| m.msg.mesh_received),
    },
    Family {
        name: "wsgate_mesh_waited_total",
        kind: Kind::Counter,
        help: "Cross-shard messages that found their ring full and waited.",
        series: Series::Plain(|m| m.msg.mesh_waited),
    },
    Family {
        name: "wsgate_mesh_shed_total",
        kind: Kind::Counter,
        help: "Cross-shard data messages shed: their ring stayed full past mesh_ring_full_wait.",
        series: Series::Plain(|m| m.msg.mesh_shed),
    },
    Family {
        name: "wsgate_mesh_pending",
        kind: Kind::Gauge,
        help: "Cross-shard messages waiting for room on a full ring.",
        series: Series::Plain(|m| m.mesh_pending),
    },
    Family {
        name: "wsgate_offline_queued_total",
        kind: Kind::Counter,
        help: "Messages queued for an offline user.",
        series: Series::Plain(|m| m.msg.offline_queued),
    },
    Family {
        name: "wsgate_offline_dropped_total",
        kind: Kind::Counter,
        help: "Offline messages dropped because the user's queue was full (oldest first).",
        series: Series::Plain(|m| m.msg.offline_dropped),
    },
    Family {
        name: "wsgate_offline_expired_total",
        kind: Kind::Counter,
        help: "Offline messages dropped for age.",
        series: Series::Plain(|m| m.msg.offline_expired),
    },
    Family {
        name: "wsgate_offline_delivered_total",
        kind: Kind::Counter,
        help: "Offline messages delivered on connect.",
        series: Series::Plain(|m| m.msg.offline_delivered),
    },
    Family {
        name: "wsgate_history_trimmed_total",
        kind: Kind::Counter,
        help: "History entries forgotten (count, bytes or age limits).",
        series: Series::Plain(|m| m.msg.history_trimmed),
    },
    Family {
        name: "wsgate_msg_replays_total",
        kind: Kind::Counter,
        help: "Resumes and joins answered with a replay from history.",
        series: Series::Plain(|m| m.msg.replays),
    },
    Family {
        name: "wsgate_msg_resyncs_total",
        kind: Kind::Counter,
        help: "Resumes and joins answered with resync.",
        series: Series::Plain(|m| m.msg.resyncs),
    },
    Family {
        name: "wsgate_msg_receipts_total",
        kind: Kind::Counter,
        help: "Delivery receipts sent to senders.",
        series: Series::Plain(|m| m.msg.receipts),
    },
    Family {
        name: "wsgate_msg_receipts_undeliverable_total",
        kind: Kind::Counter,
        help: "Receipts dropped because the sender had no connection.",
        series: Series::Plain(|m| m.msg.receipts_undeliverable),
    },
    Family {
        name: "wsgate_msg_presence_events_total",
        kind: Kind::Counter,
        help: "Room join/leave presence events sent.",
        series: Series::Plain(|m| m.msg.presence_events),
    },
    Family {
        name: "wsgate_msg_protocol_closes_total",
        kind: Kind::Counter,
        help: "Connections closed for frames that are not protocol messages (1003, 1008).",
        series: Series::Plain(|m| m.msg.protocol_closes),
    },
    Family {
        name: "wsgate_msg_client_errors_total",
        kind: Kind::Counter,
        help: "Error messages sent to clients, by code.",
        series: Series::Labelled("code", |m| sorted(&m.msg.errors_by_code)),
    },
    Family {
        name: "wsgate_msg_storage_full_refusals_total",
        kind: Kind::Counter,
        help: "Sends and publishes refused with storage_full (the disk store's budget was spent).",
        series: Series::Plain(|m| m.msg.storage_full_refusals),
    },
    Family {
        name: "wsgate_msg_owner_full_refusals_total",
        kind: Kind::Counter,
        help: "Sends and publishes refused with owner_full (they would have grown the owner's tables past max_owner_entries).",
        series: Series::Plain(|m| m.msg.owner_full_refusals),
    },
    Family {
        name: "wsgate_msg_owner_entries",
        kind: Kind::Gauge,
        help: "Users and rooms the shard's owner tracks (bounded by max_owner_entries).",
        series: Series::Plain(|m| m.msg.owner_entries),
    },
    Family {
        name: "wsgate_redis_up",
        kind: Kind::Gauge,
        help: "1 while the shard's Redis connection is up (with --redis).",
        series: Series::Plain(|m| m.cluster.up),
    },
    Family {
        name: "wsgate_redis_round_trips_total",
        kind: Kind::Counter,
        help: "Redis round trips: pipelined writes of the commands a shard's turn produced.",
        series: Series::Plain(|m| m.cluster.round_trips),
    },
    Family {
        name: "wsgate_redis_commands_total",
        kind: Kind::Counter,
        help: "Redis commands written.",
        series: Series::Plain(|m| m.cluster.commands),
    },
    Family {
        name: "wsgate_redis_reconnects_total",
        kind: Kind::Counter,
        help: "Redis reconnects after the first connect.",
        series: Series::Plain(|m| m.cluster.reconnects),
    },
    Family {
        name: "wsgate_redis_connect_failures_total",
        kind: Kind::Counter,
        help: "Redis connection attempts that failed.",
        series: Series::Plain(|m| m.cluster.connect_failures),
    },
    Family {
        name: "wsgate_redis_errors_total",
        kind: Kind::Counter,
        help: "Redis connections lost (I/O errors, EOF, bad replies, timeouts).",
        series: Series::Plain(|m| m.cluster.errors),
    },
    Family {
        name: "wsgate_redis_timeouts_total",
        kind: Kind::Counter,
        help: "Redis round trips that timed out.",
        series: Series::Plain(|m| m.cluster.timeouts),
    },
    Family {
        name: "wsgate_redis_refused_total",
        kind: Kind::Counter,
        help: "Redis batches refused at once (down, or the outbox full).",
        series: Series::Plain(|m| m.cluster.refused),
    },
    Family {
        name: "wsgate_redis_pushes_total",
        kind: Kind::Counter,
        help: "Pub/sub messages received from Redis.",
        series: Series::Plain(|m| m.cluster.pushes),
    },
    Family {
        name: "wsgate_cluster_unavailable_total",
        kind: Kind::Counter,
        help: "Requests answered unavailable (clients) or 503 (API) because Redis did not answer.",
        series: Series::Plain(|m| m.cluster.unavailable),
    },
    Family {
        name: "wsgate_cluster_requeued_total",
        kind: Kind::Counter,
        help: "Inbox messages queued offline again: the user left the node after the send found them there.",
        series: Series::Plain(|m| m.cluster.requeued),
    },
    Family {
        name: "wsgate_cluster_cleaned_total",
        kind: Kind::Counter,
        help: "Registry and membership entries of this node's previous life removed at start.",
        series: Series::Plain(|m| m.cluster.cleaned),
    },
    Family {
        name: "wsgate_redis_error_replies_total",
        kind: Kind::Counter,
        help: "Error replies from Redis (each fails its request).",
        series: Series::Plain(|m| m.cluster.error_replies),
    },
    Family {
        name: "wsgate_cluster_early_dropped_total",
        kind: Kind::Counter,
        help: "Inbox messages pushed before a connection's welcome beyond the hand-over bound (offline_max_messages), dropped; the client resumes.",
        series: Series::Plain(|m| m.cluster.early_dropped),
    },
    Family {
        name: "wsgate_cluster_live_nodes",
        kind: Kind::Gauge,
        help: "Nodes in the fleet's live set, as this shard last read it.",
        series: Series::Plain(|m| m.cluster.live_nodes),
    },
    Family {
        name: "wsgate_journal_written_bytes_total",
        kind: Kind::Counter,
        help: "Bytes appended to the disk store's journal segments.",
        series: Series::Plain(|m| m.journal.bytes_written),
    },
    Family {
        name: "wsgate_journal_records_total",
        kind: Kind::Counter,
        help: "Journal records encoded (messages, positions, acks, offline takes).",
        series: Series::Plain(|m| m.journal.records_written),
    },
    Family {
        name: "wsgate_journal_writes_total",
        kind: Kind::Counter,
        help: "Journal writes, each a batch of whole records.",
        series: Series::Plain(|m| m.journal.writes),
    },
    Family {
        name: "wsgate_journal_fsync_seconds",
        kind: Kind::Histogram,
        help: "Time of each fdatasync of the journal.",
        series: Series::Histogram(|m| &m.journal.fsync_seconds),
    },
    Family {
        name: "wsgate_journal_write_errors_total",
        kind: Kind::Counter,
        help: "Failed journal writes or syncs (retried; the acks they cover wait).",
        series: Series::Plain(|m| m.journal.write_errors),
    },
    Family {
        name: "wsgate_journal_compactions_total",
        kind: Kind::Counter,
        help: "Journal compactions finished (state restated, older segments deleted).",
        series: Series::Plain(|m| m.journal.compactions),
    },
    Family {
        name: "wsgate_journal_segments",
        kind: Kind::Gauge,
        help: "Journal segment files.",
        series: Series::Plain(|m| m.journal.segments),
    },
    Family {
        name: "wsgate_journal_disk_bytes",
        kind: Kind::Gauge,
        help: "Bytes in journal segment files.",
        series: Series::Plain(|m| m.journal.disk_bytes),
    },
    Family {
        name: "wsgate_journal_full",
        kind: Kind::Gauge,
        help: "1 while new messages are refused because the disk budget is spent.",
        series: Series::Plain(|m| m.journal.full),
    },
    Family {
        name: "wsgate_journal_held",
        kind: Kind::Gauge,
        help: "Answers (acks, deliveries, API replies) waiting for the journal to be durable.",
        series: Series::Plain(|m| m.journal.held),
    },
    Family {
        name: "wsgate_journal_recovered_records",
        kind: Kind::Gauge,
        help: "Records read intact from the journal at start.",
        series: Series::Plain(|m| m.journal.recovered_records),
    },
    Family {
        name: "wsgate_journal_recovered_bytes",
        kind: Kind::Gauge,
        help: "Bytes read intact from the journal at start.",
        series: Series::Plain(|m| m.journal.recovered_bytes),
    },
    Family {
        name: "wsgate_journal_recovery_cut_bytes",
        kind: Kind::Gauge,
        help: "Bytes cut at start from torn or corrupt journal segment tails.",
        series: Series::Plain(|m| m.journal.recovery_cut_bytes),
    },
    Family {
        name: "wsgate_journal_recovery_milliseconds",
        kind: Kind::Gauge,
        help: "How long the start-up recovery of the journal took.",
        series: Series::Plain(|m| m.journal.recovery_millis),
    },
    Family {
        name: "wsgate_tls_sessions",
        kind: Kind::Gauge,
        help: "Connections on the TLS listener now (handshaking, open or closing).",
        series: Series::Plain(|m| m.tls_sessions),
    },
    Family {
        name: "wsgate_tls_handshakes_total",
        kind: Kind::Counter,
        help: "TLS handshakes completed, by protocol version.",
        series: Series::Labelled("version", |m| sorted(&m.tls_handshakes)),
    },
    Family {
        name: "wsgate_tls_resumed_total",
        kind: Kind::Counter,
        help: "TLS handshakes that resumed an earlier session (ticket or session cache).",
        series: Series::Plain(|m| m.tls_resumed),
    },
    Family {
        name: "wsgate_tls_handshake_failures_total",
        kind: Kind::Counter,
        help: "TLS handshakes failed, by reason.",
        series: Series::Labelled("reason", |m| sorted(&m.tls_handshake_failures)),
    },
];

/// The shard metrics (one slot per shard, in shard order, as [`Registry::snapshot`]
/// returns them) and the process facts as Prometheus text exposition format 0.0.4, the
/// body of `GET /metrics` (`Content-Type: text/plain; version=0.0.4`).
///
/// Every shard family has one sample per shard, labelled `shard="N"`; labelled counters
/// add `reason=`, `code=` or `error=`. Families with no sample yet still get their
/// `# HELP` and `# TYPE` lines, so dashboards see the name from the first scrape.
pub fn render(shards: &[ShardMetrics], process: &ProcessInfo) -> String {
    let mut out = String::with_capacity(8 * 1024);
    for family in FAMILIES {
        header(&mut out, family.name, family.kind, family.help);
        for (shard, metrics) in shards.iter().enumerate() {
            match family.series {
                Series::Plain(get) => {
                    let _ = writeln!(out, "{}{{shard=\"{shard}\"}} {}", family.name, get(metrics));
                }
                Series::Labelled(label, get) => {
                    for (value, count) in get(metrics) {
                        let _ = writeln!(
                            out,
                            "{}{{shard=\"{shard}\",{label}=\"{}\"}} {count}",
                            family.name,
                            escape_label_value(&value)
                        );
                    }
                }
                Series::Histogram(get) => {
                    let h = get(metrics);
                    let name = family.name;
                    let mut cumulative = 0;
                    for (bound, n) in Histogram::BOUNDS.iter().zip(h.buckets) {
                        cumulative += n;
                        let _ = writeln!(out, "{name}_bucket{{shard=\"{shard}\",le=\"{bound}\"}} {cumulative}");
                    }
                    let _ = writeln!(out, "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {}", h.count());
                    let sum = h.sum_micros as f64 / 1e6;
                    let _ = writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {sum}");
                    let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {}", h.count());
                }
            }
        }
    }

    let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
        header(out, name, Kind::Gauge, help);
        let _ = writeln!(out, "{name} {value}");
    };
    gauge(&mut out, "wsgate_shards", "Shards configured.", process.shards as u64);
    if let Some((ok, failed)) = process.tls_reloads {
        let name = "wsgate_tls_reloads_total";
        header(
            &mut out,
            name,
            Kind::Counter,
            "Certificate reloads (SIGHUP), by result; a failed one keeps the old certificate.",
        );
        let _ = writeln!(out, "{name}{{result=\"ok\"}} {ok}");
        let _ = writeln!(out, "{name}{{result=\"failed\"}} {failed}");
    }
    gauge(
        &mut out,
        "wsgate_draining",
        "1 while the process drains connections before exiting, else 0.",
        u64::from(process.draining),
    );
    gauge(
        &mut out,
        "wsgate_open_files_limit",
        "Soft limit on open files, the ceiling on connections.",
        process.nofile_limit,
    );
    if let Some(rss) = process.rss_bytes {
        gauge(
            &mut out,
            "wsgate_process_resident_memory_bytes",
            "Resident memory of the process.",
            rss,
        );
        // Only with connections open: the figure means nothing for zero.
        let connections: u64 = shards.iter().map(|m| m.connections).sum();
        if let Some(per_connection) = rss.checked_div(connections) {
            gauge(
                &mut out,
                "wsgate_memory_per_connection_bytes",
                "Resident memory divided by open connections (all shards).",
                per_connection,
            );
        }
    }
    out
}

/// Appends `wsgate_api_requests_total{route,status}`: backend API requests answered
/// by the admin thread, by route (the table's path, `unknown` for other `/api/` paths)
/// and HTTP status. `counts` in the order to print.
pub fn render_api_requests<'a>(out: &mut String, counts: impl IntoIterator<Item = (&'a str, u16, u64)>) {
    let name = "wsgate_api_requests_total";
    header(
        out,
        name,
        Kind::Counter,
        "Backend API requests, by route and HTTP status.",
    );
    for (route, status, n) in counts {
        let _ = writeln!(
            out,
            "{name}{{route=\"{}\",status=\"{status}\"}} {n}",
            escape_label_value(route)
        );
    }
}

fn header(out: &mut String, name: &str, kind: Kind, help: &str) {
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label values escape backslash, double quote and line feed (format 0.0.4).
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text escapes backslash and line feed (format 0.0.4).
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_exact_text_for_one_shard() {
        let mut m = ShardMetrics {
            connections: 4,
            handshakes_in_progress: 1,
            accepted: 9,
            upgrades: 5,
            frames_in: 20,
            frames_out: 21,
            messages_in: 10,
            messages_out: 11,
            bytes_in: 1000,
            bytes_out: 2000,
            slow_consumer_closes: 1,
            queued_bytes: 300,
            heartbeat_timeouts: 2,
            close_timeouts: 3,
            handshake_timeouts: 4,
            abnormal_closes: 5,
            closed: 6,
            tls_sessions: 3,
            tls_resumed: 1,
            ..ShardMetrics::default()
        };
        ShardMetrics::bump(&mut m.tls_handshakes, "tls13");
        ShardMetrics::bump(&mut m.tls_handshakes, "tls13");
        ShardMetrics::bump(&mut m.tls_handshakes, "tls12");
        ShardMetrics::bump(&mut m.tls_handshake_failures, "bad_message");
        ShardMetrics::bump(&mut m.handshake_failures, "handshake_limit");
        ShardMetrics::bump(&mut m.limit_hits, "message_rate");
        m.msg.publishes_accepted = 1;
        m.msg.errors_by_code.insert("too_large", 2);
        ShardMetrics::bump(&mut m.handshake_failures, "bad_version");
        ShardMetrics::bump(&mut m.handshake_failures, "bad_version");
        ShardMetrics::bump(&mut m.close_codes_sent, 1009);
        ShardMetrics::bump(&mut m.close_codes_sent, 1000);
        ShardMetrics::bump(&mut m.close_codes_received, 1005);
        ShardMetrics::bump(&mut m.protocol_errors, "frame_too_big");
        let process = ProcessInfo {
            rss_bytes: Some(4096 * 1000),
            draining: true,
            nofile_limit: 1_048_576,
            shards: 1,
            tls_reloads: Some((2, 1)),
        };
        let expected = r#"# HELP wsgate_connections Upgraded WebSocket connections open now.
# TYPE wsgate_connections gauge
wsgate_connections{shard="0"} 4
# HELP wsgate_handshakes_in_progress Connections in the HTTP upgrade handshake now.
# TYPE wsgate_handshakes_in_progress gauge
wsgate_handshakes_in_progress{shard="0"} 1
# HELP wsgate_connections_accepted_total TCP connections accepted by the listener.
# TYPE wsgate_connections_accepted_total counter
wsgate_connections_accepted_total{shard="0"} 9
# HELP wsgate_upgrades_total Handshakes completed with 101 Switching Protocols.
# TYPE wsgate_upgrades_total counter
wsgate_upgrades_total{shard="0"} 5
# HELP wsgate_handshake_failures_total Handshakes refused, by reason.
# TYPE wsgate_handshake_failures_total counter
wsgate_handshake_failures_total{shard="0",reason="bad_version"} 2
wsgate_handshake_failures_total{shard="0",reason="handshake_limit"} 1
# HELP wsgate_auth_failures_total Upgrades refused with 401 for their token, by reason.
# TYPE wsgate_auth_failures_total counter
# HELP wsgate_auth_accepted_total Upgrades admitted, by where the token came from (a rising query share means tokens reach URL logs).
# TYPE wsgate_auth_accepted_total counter
# HELP wsgate_frames_received_total Frames received, data and control.
# TYPE wsgate_frames_received_total counter
wsgate_frames_received_total{shard="0"} 20
# HELP wsgate_frames_sent_total Frames sent, data and control.
# TYPE wsgate_frames_sent_total counter
wsgate_frames_sent_total{shard="0"} 21
# HELP wsgate_messages_received_total Data messages received.
# TYPE wsgate_messages_received_total counter
wsgate_messages_received_total{shard="0"} 10
# HELP wsgate_messages_queued_total Data messages queued for sending.
# TYPE wsgate_messages_queued_total counter
wsgate_messages_queued_total{shard="0"} 11
# HELP wsgate_received_bytes_total Bytes read from sockets, handshakes included.
# TYPE wsgate_received_bytes_total counter
wsgate_received_bytes_total{shard="0"} 1000
# HELP wsgate_sent_bytes_total Bytes written to sockets.
# TYPE wsgate_sent_bytes_total counter
wsgate_sent_bytes_total{shard="0"} 2000
# HELP wsgate_close_frames_sent_total Close frames sent, by close code.
# TYPE wsgate_close_frames_sent_total counter
wsgate_close_frames_sent_total{shard="0",code="1000"} 1
wsgate_close_frames_sent_total{shard="0",code="1009"} 1
# HELP wsgate_close_frames_received_total Close frames received, by close code (1005: no code).
# TYPE wsgate_close_frames_received_total counter
wsgate_close_frames_received_total{shard="0",code="1005"} 1
# HELP wsgate_protocol_errors_total Protocol errors by peers, by error.
# TYPE wsgate_protocol_errors_total counter
wsgate_protocol_errors_total{shard="0",error="frame_too_big"} 1
# HELP wsgate_slow_consumer_closes_total Connections closed because their send queue or the shard's send budget was full.
# TYPE wsgate_slow_consumer_closes_total counter
wsgate_slow_consumer_closes_total{shard="0"} 1
# HELP wsgate_compression_total permessage-deflate: upgrades that negotiated it, messages and bytes compressed and inflated.
# TYPE wsgate_compression_total counter
# HELP wsgate_edge_limit_hits_total Edge limits hit (429 at the upgrade, 1008 after it, or an address let in uncounted), by limit.
# TYPE wsgate_edge_limit_hits_total counter
wsgate_edge_limit_hits_total{shard="0",limit="message_rate"} 1
# HELP wsgate_send_queue_bytes Bytes queued for sending on all connections of the shard.
# TYPE wsgate_send_queue_bytes gauge
wsgate_send_queue_bytes{shard="0"} 300
# HELP wsgate_heartbeat_timeouts_total Connections closed because the peer was silent for the idle timeout.
# TYPE wsgate_heartbeat_timeouts_total counter
wsgate_heartbeat_timeouts_total{shard="0"} 2
# HELP wsgate_close_timeouts_total Close handshakes the peer did not finish within the close timeout.
# TYPE wsgate_close_timeouts_total counter
wsgate_close_timeouts_total{shard="0"} 3
# HELP wsgate_handshake_timeouts_total Handshakes not completed within the handshake timeout.
# TYPE wsgate_handshake_timeouts_total counter
wsgate_handshake_timeouts_total{shard="0"} 4
# HELP wsgate_abnormal_closes_total Connections that ended without a close handshake (EOF or reset).
# TYPE wsgate_abnormal_closes_total counter
wsgate_abnormal_closes_total{shard="0"} 5
# HELP wsgate_connections_closed_total Connections closed, any way.
# TYPE wsgate_connections_closed_total counter
wsgate_connections_closed_total{shard="0"} 6
# HELP wsgate_shard_watchdog_wakes_total Times the watchdog woke a shard that slept through its ticks.
# TYPE wsgate_shard_watchdog_wakes_total counter
wsgate_shard_watchdog_wakes_total{shard="0"} 0
# HELP wsgate_shard_commands_refused_total Commands refused because the shard's inbox was full (API requests answered 503, evictions dropped).
# TYPE wsgate_shard_commands_refused_total counter
wsgate_shard_commands_refused_total{shard="0"} 0
# HELP wsgate_msg_users Users with a connection on the shard (messaging).
# TYPE wsgate_msg_users gauge
wsgate_msg_users{shard="0"} 0
# HELP wsgate_msg_owned_users_online Users owned by the shard with a connection on any shard (the sum over shards counts each user once).
# TYPE wsgate_msg_owned_users_online gauge
wsgate_msg_owned_users_online{shard="0"} 0
# HELP wsgate_msg_owned_rooms Rooms owned by the shard with at least one member (the sum over shards counts each room once).
# TYPE wsgate_msg_owned_rooms gauge
wsgate_msg_owned_rooms{shard="0"} 0
# HELP wsgate_msg_rooms Rooms with a member on the shard.
# TYPE wsgate_msg_rooms gauge
wsgate_msg_rooms{shard="0"} 0
# HELP wsgate_msg_sends_total User-to-user messages accepted by their owner (sequenced and stored).
# TYPE wsgate_msg_sends_total counter
wsgate_msg_sends_total{shard="0"} 0
# HELP wsgate_msg_publishes_total Room publishes accepted by their owner.
# TYPE wsgate_msg_publishes_total counter
wsgate_msg_publishes_total{shard="0"} 1
# HELP wsgate_msg_deliveries_total Messaging frames handed to local connections (one per recipient connection).
# TYPE wsgate_msg_deliveries_total counter
wsgate_msg_deliveries_total{shard="0"} 0
# HELP wsgate_mesh_sent_total Cross-shard messages pushed onto rings.
# TYPE wsgate_mesh_sent_total counter
wsgate_mesh_sent_total{shard="0"} 0
# HELP wsgate_mesh_received_total Cross-shard messages taken off rings.
# TYPE wsgate_mesh_received_total counter
wsgate_mesh_received_total{shard="0"} 0
# HELP wsgate_mesh_waited_total Cross-shard messages that found their ring full and waited.
# TYPE wsgate_mesh_waited_total counter
wsgate_mesh_waited_total{shard="0"} 0
# HELP wsgate_mesh_shed_total Cross-shard data messages shed: their ring stayed full past mesh_ring_full_wait.
# TYPE wsgate_mesh_shed_total counter
wsgate_mesh_shed_total{shard="0"} 0
# HELP wsgate_mesh_pending Cross-shard messages waiting for room on a full ring.
# TYPE wsgate_mesh_pending gauge
wsgate_mesh_pending{shard="0"} 0
# HELP wsgate_offline_queued_total Messages queued for an offline user.
# TYPE wsgate_offline_queued_total counter
wsgate_offline_queued_total{shard="0"} 0
# HELP wsgate_offline_dropped_total Offline messages dropped because the user's queue was full (oldest first).
# TYPE wsgate_offline_dropped_total counter
wsgate_offline_dropped_total{shard="0"} 0
# HELP wsgate_offline_expired_total Offline messages dropped for age.
# TYPE wsgate_offline_expired_total counter
wsgate_offline_expired_total{shard="0"} 0
# HELP wsgate_offline_delivered_total Offline messages delivered on connect.
# TYPE wsgate_offline_delivered_total counter
wsgate_offline_delivered_total{shard="0"} 0
# HELP wsgate_history_trimmed_total History entries forgotten (count, bytes or age limits).
# TYPE wsgate_history_trimmed_total counter
wsgate_history_trimmed_total{shard="0"} 0
# HELP wsgate_msg_replays_total Resumes and joins answered with a replay from history.
# TYPE wsgate_msg_replays_total counter
wsgate_msg_replays_total{shard="0"} 0
# HELP wsgate_msg_resyncs_total Resumes and joins answered with resync.
# TYPE wsgate_msg_resyncs_total counter
wsgate_msg_resyncs_total{shard="0"} 0
# HELP wsgate_msg_receipts_total Delivery receipts sent to senders.
# TYPE wsgate_msg_receipts_total counter
wsgate_msg_receipts_total{shard="0"} 0
# HELP wsgate_msg_receipts_undeliverable_total Receipts dropped because the sender had no connection.
# TYPE wsgate_msg_receipts_undeliverable_total counter
wsgate_msg_receipts_undeliverable_total{shard="0"} 0
# HELP wsgate_msg_presence_events_total Room join/leave presence events sent.
# TYPE wsgate_msg_presence_events_total counter
wsgate_msg_presence_events_total{shard="0"} 0
# HELP wsgate_msg_protocol_closes_total Connections closed for frames that are not protocol messages (1003, 1008).
# TYPE wsgate_msg_protocol_closes_total counter
wsgate_msg_protocol_closes_total{shard="0"} 0
# HELP wsgate_msg_client_errors_total Error messages sent to clients, by code.
# TYPE wsgate_msg_client_errors_total counter
wsgate_msg_client_errors_total{shard="0",code="too_large"} 2
# HELP wsgate_msg_storage_full_refusals_total Sends and publishes refused with storage_full (the disk store's budget was spent).
# TYPE wsgate_msg_storage_full_refusals_total counter
wsgate_msg_storage_full_refusals_total{shard="0"} 0
# HELP wsgate_msg_owner_full_refusals_total Sends and publishes refused with owner_full (they would have grown the owner's tables past max_owner_entries).
# TYPE wsgate_msg_owner_full_refusals_total counter
wsgate_msg_owner_full_refusals_total{shard="0"} 0
# HELP wsgate_msg_owner_entries Users and rooms the shard's owner tracks (bounded by max_owner_entries).
# TYPE wsgate_msg_owner_entries gauge
wsgate_msg_owner_entries{shard="0"} 0
# HELP wsgate_redis_up 1 while the shard's Redis connection is up (with --redis).
# TYPE wsgate_redis_up gauge
wsgate_redis_up{shard="0"} 0
# HELP wsgate_redis_round_trips_total Redis round trips: pipelined writes of the commands a shard's turn produced.
# TYPE wsgate_redis_round_trips_total counter
wsgate_redis_round_trips_total{shard="0"} 0
# HELP wsgate_redis_commands_total Redis commands written.
# TYPE wsgate_redis_commands_total counter
wsgate_redis_commands_total{shard="0"} 0
# HELP wsgate_redis_reconnects_total Redis reconnects after the first connect.
# TYPE wsgate_redis_reconnects_total counter
wsgate_redis_reconnects_total{shard="0"} 0
# HELP wsgate_redis_connect_failures_total Redis connection attempts that failed.
# TYPE wsgate_redis_connect_failures_total counter
wsgate_redis_connect_failures_total{shard="0"} 0
# HELP wsgate_redis_errors_total Redis connections lost (I/O errors, EOF, bad replies, timeouts).
# TYPE wsgate_redis_errors_total counter
wsgate_redis_errors_total{shard="0"} 0
# HELP wsgate_redis_timeouts_total Redis round trips that timed out.
# TYPE wsgate_redis_timeouts_total counter
wsgate_redis_timeouts_total{shard="0"} 0
# HELP wsgate_redis_refused_total Redis batches refused at once (down, or the outbox full).
# TYPE wsgate_redis_refused_total counter
wsgate_redis_refused_total{shard="0"} 0
# HELP wsgate_redis_pushes_total Pub/sub messages received from Redis.
# TYPE wsgate_redis_pushes_total counter
wsgate_redis_pushes_total{shard="0"} 0
# HELP wsgate_cluster_unavailable_total Requests answered unavailable (clients) or 503 (API) because Redis did not answer.
# TYPE wsgate_cluster_unavailable_total counter
wsgate_cluster_unavailable_total{shard="0"} 0
# HELP wsgate_cluster_requeued_total Inbox messages queued offline again: the user left the node after the send found them there.
# TYPE wsgate_cluster_requeued_total counter
wsgate_cluster_requeued_total{shard="0"} 0
# HELP wsgate_cluster_cleaned_total Registry and membership entries of this node's previous life removed at start.
# TYPE wsgate_cluster_cleaned_total counter
wsgate_cluster_cleaned_total{shard="0"} 0
# HELP wsgate_redis_error_replies_total Error replies from Redis (each fails its request).
# TYPE wsgate_redis_error_replies_total counter
wsgate_redis_error_replies_total{shard="0"} 0
# HELP wsgate_cluster_early_dropped_total Inbox messages pushed before a connection's welcome beyond the hand-over bound (offline_max_messages), dropped; the client resumes.
# TYPE wsgate_cluster_early_dropped_total counter
wsgate_cluster_early_dropped_total{shard="0"} 0
# HELP wsgate_cluster_live_nodes Nodes in the fleet's live set, as this shard last read it.
# TYPE wsgate_cluster_live_nodes gauge
wsgate_cluster_live_nodes{shard="0"} 0
# HELP wsgate_journal_written_bytes_total Bytes appended to the disk store's journal segments.
# TYPE wsgate_journal_written_bytes_total counter
wsgate_journal_written_bytes_total{shard="0"} 0
# HELP wsgate_journal_records_total Journal records encoded (messages, positions, acks, offline takes).
# TYPE wsgate_journal_records_total counter
wsgate_journal_records_total{shard="0"} 0
# HELP wsgate_journal_writes_total Journal writes, each a batch of whole records.
# TYPE wsgate_journal_writes_total counter
wsgate_journal_writes_total{shard="0"} 0
# HELP wsgate_journal_fsync_seconds Time of each fdatasync of the journal.
# TYPE wsgate_journal_fsync_seconds histogram
wsgate_journal_fsync_seconds_bucket{shard="0",le="0.00005"} 0
wsgate_journal_fsync_seconds_bucket{shard="0",le="0.0001"} 0
wsgate_journal_fsync_seconds_bucket{shard="0",le="0.00025"} 0
wsgate_journal_fsync_seconds_bucket{shard="0",le="0.0005"} 0
wsgate_journal_fsync_seconds_bucket{shard="0",le="0.001"} 0
wsgate_journal_fsync_seconds_bucket{shard="0",le="0.002"} 0
wsgate_journal_fsync_seconds_bucket{shard="0",le="0.005"} 0
wsgate_journal_fsync_seconds_bucket{shard="0",le="0.01"} 0
wsgate_journal_fsync_seconds_bucket{shard="0",le="0.025"} 0
wsgate_journal_fsync_seconds_bucket{shard="0",le="0.05"} 0
wsgate_journal_fsync_seconds_bucket{shard="0",le="0.1"} 0
wsgate_journal_fsync_seconds_bucket{shard="0",le="0.25"} 0
wsgate_journal_fsync_seconds_bucket{shard="0",le="1"} 0
wsgate_journal_fsync_seconds_bucket{shard="0",le="+Inf"} 0
wsgate_journal_fsync_seconds_sum{shard="0"} 0
wsgate_journal_fsync_seconds_count{shard="0"} 0
# HELP wsgate_journal_write_errors_total Failed journal writes or syncs (retried; the acks they cover wait).
# TYPE wsgate_journal_write_errors_total counter
wsgate_journal_write_errors_total{shard="0"} 0
# HELP wsgate_journal_compactions_total Journal compactions finished (state restated, older segments deleted).
# TYPE wsgate_journal_compactions_total counter
wsgate_journal_compactions_total{shard="0"} 0
# HELP wsgate_journal_segments Journal segment files.
# TYPE wsgate_journal_segments gauge
wsgate_journal_segments{shard="0"} 0
# HELP wsgate_journal_disk_bytes Bytes in journal segment files.
# TYPE wsgate_journal_disk_bytes gauge
wsgate_journal_disk_bytes{shard="0"} 0
# HELP wsgate_journal_full 1 while new messages are refused because the disk budget is spent.
# TYPE wsgate_journal_full gauge
wsgate_journal_full{shard="0"} 0
# HELP wsgate_journal_held Answers (acks, deliveries, API replies) waiting for the journal to be durable.
# TYPE wsgate_journal_held gauge
wsgate_journal_held{shard="0"} 0
# HELP wsgate_journal_recovered_records Records read intact from the journal at start.
# TYPE wsgate_journal_recovered_records gauge
wsgate_journal_recovered_records{shard="0"} 0
# HELP wsgate_journal_recovered_bytes Bytes read intact from the journal at start.
# TYPE wsgate_journal_recovered_bytes gauge
wsgate_journal_recovered_bytes{shard="0"} 0
# HELP wsgate_journal_recovery_cut_bytes Bytes cut at start from torn or corrupt journal segment tails.
# TYPE wsgate_journal_recovery_cut_bytes gauge
wsgate_journal_recovery_cut_bytes{shard="0"} 0
# HELP wsgate_journal_recovery_milliseconds How long the start-up recovery of the journal took.
# TYPE wsgate_journal_recovery_milliseconds gauge
wsgate_journal_recovery_milliseconds{shard="0"} 0
# HELP wsgate_tls_sessions Connections on the TLS listener now (handshaking, open or closing).
# TYPE wsgate_tls_sessions gauge
wsgate_tls_sessions{shard="0"} 3
# HELP wsgate_tls_handshakes_total TLS handshakes completed, by protocol version.
# TYPE wsgate_tls_handshakes_total counter
wsgate_tls_handshakes_total{shard="0",version="tls12"} 1
wsgate_tls_handshakes_total{shard="0",version="tls13"} 2
# HELP wsgate_tls_resumed_total TLS handshakes that resumed an earlier session (ticket or session cache).
# TYPE wsgate_tls_resumed_total counter
wsgate_tls_resumed_total{shard="0"} 1
# HELP wsgate_tls_handshake_failures_total TLS handshakes failed, by reason.
# TYPE wsgate_tls_handshake_failures_total counter
wsgate_tls_handshake_failures_total{shard="0",reason="bad_message"} 1
# HELP wsgate_shards Shards configured.
# TYPE wsgate_shards gauge
wsgate_shards 1
# HELP wsgate_tls_reloads_total Certificate reloads (SIGHUP), by result; a failed one keeps the old certificate.
# TYPE wsgate_tls_reloads_total counter
wsgate_tls_reloads_total{result="ok"} 2
wsgate_tls_reloads_total{result="failed"} 1
# HELP wsgate_draining 1 while the process drains connections before exiting, else 0.
# TYPE wsgate_draining gauge
wsgate_draining 1
# HELP wsgate_open_files_limit Soft limit on open files, the ceiling on connections.
# TYPE wsgate_open_files_limit gauge
wsgate_open_files_limit 1048576
# HELP wsgate_process_resident_memory_bytes Resident memory of the process.
# TYPE wsgate_process_resident_memory_bytes gauge
wsgate_process_resident_memory_bytes 4096000
# HELP wsgate_memory_per_connection_bytes Resident memory divided by open connections (all shards).
# TYPE wsgate_memory_per_connection_bytes gauge
wsgate_memory_per_connection_bytes 1024000
"#;
        let text = render(&[m], &process);
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn shards_are_labelled_in_order_and_families_stay_together() {
        let shards = [
            ShardMetrics {
                connections: 1,
                ..ShardMetrics::default()
            },
            ShardMetrics {
                connections: 2,
                ..ShardMetrics::default()
            },
        ];
        let text = render(
            &shards,
            &ProcessInfo {
                shards: 2,
                ..ProcessInfo::default()
            },
        );
        assert!(text.contains(
            "# TYPE wsgate_connections gauge\nwsgate_connections{shard=\"0\"} 1\nwsgate_connections{shard=\"1\"} 2\n# HELP"
        ));
        // Unknown RSS: no memory gauges. No connections: no per-connection figure.
        assert!(!text.contains("resident_memory") && !text.contains("per_connection"));
        assert!(text.contains("\nwsgate_draining 0\n"));
        // Each name's HELP appears once: all samples of a family are together.
        for family in FAMILIES {
            assert_eq!(text.matches(&format!("# HELP {} ", family.name)).count(), 1);
        }
        let rss_no_connections = ProcessInfo {
            rss_bytes: Some(1),
            ..ProcessInfo::default()
        };
        let text = render(&[ShardMetrics::default()], &rss_no_connections);
        assert!(text.contains("wsgate_process_resident_memory_bytes 1\n") && !text.contains("per_connection"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut m = ShardMetrics::default();
        ShardMetrics::bump(&mut m.protocol_errors, "quote\"back\\slash\nline");
        let text = render(&[m], &ProcessInfo::default());
        assert!(
            text.contains("wsgate_protocol_errors_total{shard=\"0\",error=\"quote\\\"back\\\\slash\\nline\"} 1\n"),
            "{text}"
        );
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }
}

#[cfg(test)]
mod merge_tests {
    use super::ShardMetrics;

    #[test]
    fn merge_sums_plain_labelled_and_messaging_counters() {
        let mut a = ShardMetrics {
            connections: 2,
            commands_refused: 1,
            ..ShardMetrics::default()
        };
        a.msg.sends_accepted = 3;
        ShardMetrics::bump(&mut a.limit_hits, "message_rate");
        let mut b = ShardMetrics {
            connections: 5,
            watchdog_wakes: 4,
            ..ShardMetrics::default()
        };
        b.msg.sends_accepted = 7;
        ShardMetrics::bump(&mut b.limit_hits, "message_rate");
        ShardMetrics::bump(&mut b.msg.errors_by_code, "too_large");
        a.merge(b);
        assert_eq!((a.connections, a.commands_refused, a.watchdog_wakes), (7, 1, 4));
        assert_eq!(a.msg.sends_accepted, 10);
        assert_eq!(a.limit_hits.get("message_rate"), Some(&2));
        assert_eq!(a.msg.errors_by_code.get("too_large"), Some(&1));
    }
}
