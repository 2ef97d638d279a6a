//! One shard: everything one core owns, driven by its connection ring and its tick.
//!
//! Data enters a shard three ways: completions of its connection ring (new sockets,
//! readable sockets, writable sockets), commands from other threads (drain), and the
//! timer tick (deadlines, drain progress, metrics). It leaves as bytes written to
//! sockets. A shard never blocks and never shares: its connection table, timer wheel,
//! send queues and counters belong to it alone.
//!
//! # Connection slots
//!
//! Connections live in a [`Slab`] (`slots`) reserved up front for the shard's connection
//! cap (reserved address space is not resident memory; pages are touched only as slots
//! are used). A connection is named by its slab [`Key`]: the slot index and the slot's
//! generation, which the slab bumps every time the slot is freed. The same key is the
//! ring requests' `user_data` (with the request kind on top), the wheel's entry,
//! messaging's `ConnId` and, with the shard number, the owner's directory entry, so a late
//! completion, deadline or message for a closed connection can never reach the slot's
//! next owner. Lookups are an index, not a hash.
//!
//! # What an idle connection holds
//!
//! A `Slot`: the protocol state machine (`proto::connection::Connection`), the fd, the
//! generation (kept in the slot for the slab), the wheel tick and a few flags, and
//! `io: None`. No buffer, no task, no timer object. `Io` (request bytes during the handshake, the send queue, a deadline)
//! is allocated while it is needed and freed when it is empty again.
//!
//! # Where each job lives
//!
//! One file per job, after hyper's `proto/h1`; each `impl Shard` block in them adds the
//! methods of its job, and each file's doc says what enters and leaves it.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the `Shard` struct, what it is built from, its constants |
//! | `handle.rs` | what other threads may touch: the command inbox, the doorbell, the watchdog's view |
//! | `slot.rs` | one connection's slot, its busy-time `Io`, its phases, the `user_data` tags (from its slab key) |
//! | `driver.rs` | the turn (doorbell) and the tick (timer wheel), completions dispatched, deadlines, metrics |
//! | `accept.rs` | new sockets from the plain and TLS listeners, refused or given a slot |
//! | `read.rs` | socket bytes (plain, or TLS decrypted) into the shard buffer, EOF |
//! | `upgrade.rs` | the HTTP upgrade: admission (edge, token, user limit) and the 101 or refusal |
//! | `frames.rs` | WebSocket frames through the state machine, and the hand-off to messaging |
//! | `send.rs` | send queues, the slow-consumer policy, flushing (plain and TLS) |
//! | `close.rs` | leaving the open set, eviction, linger, freeing a slot, drain |
//! | `journal.rs` | the disk store's hand-off: records to the writer task, durable answers released |
//! | `cluster.rs` | with `--redis`: the hand-off to the shard's Redis connection (batches out, replies and pushes in) |

mod accept;
mod close;
mod cluster;
mod compress;
mod driver;
mod frames;
mod handle;
mod journal;
mod read;
mod send;
mod slot;
mod upgrade;

pub use self::close::DrainGroup;
pub(crate) use self::cluster::{Events as ClusterEvents, pump as cluster_pump};
pub use self::handle::{COMMAND_INBOX_CAPACITY, Command, ShardHandle};

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use self::close::Drain;
use self::slot::Slot;
use super::ring::{Completion, ConnRing};
use super::wheel::Wheel;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::edge::{Edge, MessageRate};
use crate::metrics::{Registry, ShardMetrics};
use crate::msg::core::MsgShard;
use crate::msg::mesh::{Endpoint, MeshMsg};
use crate::msg::protocol;
use crate::msg::store::MemStore;
use crate::proto::frame::{OpCode, SharedFrame};
use crate::proto::handshake::HandshakeConfig;
use crate::slab::{Key, Slab};
use crate::tls::TlsContext;

/// `user_data` layout: kind in the top 2 bits, then the connection's slab key
/// ([`Key::to_user_data`]: generation in the next 30 bits, slot index in the low 32).
const KIND_READ: u64 = 0;
const KIND_WRITE: u64 = 1 << 62;
const KIND_ACCEPT: u64 = 2 << 62;
const KIND_MASK: u64 = 3 << 62;
/// The accept request of the plain listener and of the TLS listener (the low bit tells
/// which listener a new socket came from).
const ACCEPT_PLAIN: u64 = KIND_ACCEPT;
const ACCEPT_TLS: u64 = KIND_ACCEPT | 1;
/// Every send is non-blocking and must not raise SIGPIPE on a reset peer.
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

/// Bytes one connection may read in one turn before the shard moves on to others (the
/// rest is read in the next turn), so a fast sender cannot starve its neighbours.
const READ_BUDGET_BYTES: usize = 256 * 1024;
/// Completions handled per batch; the loop repeats until the ring is empty.
const COMPLETION_BATCH: usize = 4096;
/// Frames gathered into one `sendmsg` (one syscall for many queued frames).
const IOV_BATCH: usize = 64;
/// Slots of the timer wheel: with the default 100 ms tick, a 102 s horizon, above the
/// default heartbeat (25 s) and idle (60 s) deadlines.
const WHEEL_SLOTS: usize = 1024;
/// Plaintext gathered from a TLS connection's send queue into one `seal` (one full TLS
/// record): many small frames share a record instead of paying 22 bytes and an AEAD call
/// each, and at most this much ciphertext (plus one message) waits per connection.
const TLS_SEAL_BATCH_BYTES: usize = 16 * 1024;
/// Messages taken from each other shard's ring per turn (the rest wait for the next).
const MESH_RECV_BATCH: usize = 4096;
/// How long accepting pauses after the process ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the shard's loop should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardState {
    /// Keep running.
    Running,
    /// Drained: the shard's task may end.
    Finished,
}

/// A shard.
pub struct Shard {
    id: usize,
    cfg: Arc<Config>,
    handshake: HandshakeConfig,
    ring: ConnRing,
    handle: Arc<ShardHandle>,
    registry: Arc<Registry>,
    /// Checks the token of every upgrade request before the 101 (read-only, shared).
    auth: Arc<Authenticator>,
    /// Per-address limits, shared by all shards (touched at upgrade and close only).
    edge: Arc<Edge>,
    /// Messaging (`None` in echo mode): this shard's owner and local sides.
    msg: Option<MsgShard>,
    /// The journal writer's signal and counters (disk store only).
    journal: Option<std::rc::Rc<crate::server::journal::Signal>>,
    journal_stats: Option<std::rc::Rc<std::cell::RefCell<crate::server::journal::JournalStats>>>,
    /// This shard's ends of the rings to and from every other shard.
    mesh: Option<Endpoint<MeshMsg>>,
    /// With `--redis`: the shard's Redis connection (see `cluster.rs`).
    cluster: Option<cluster::ClusterIo>,
    /// The per-connection message rate limit, if on.
    message_rate: Option<MessageRate>,
    /// Time zero of the message-rate clocks.
    epoch: Instant,
    listener: Option<OwnedFd>,
    /// The TLS listener, when TLS is configured.
    tls_listener: Option<OwnedFd>,
    /// The process's TLS configuration (reloaded by the main thread on SIGHUP).
    tls: Option<Arc<TlsContext>>,
    /// The configuration new TLS connections get, and its generation: refreshed at
    /// accept when the context's generation moved.
    tls_config: Option<(u64, Arc<rustls::ServerConfig>)>,
    /// Decrypted bytes of one TLS read: swapped with `buf` while they go through the
    /// same upgrade and frame code as plain bytes. Empty unless TLS is on.
    plain: Vec<u8>,
    /// Queued plaintext gathered for one `seal`.
    seal_buf: Vec<u8>,
    /// permessage-deflate (`--compression on`): the shard's compressor and inflater.
    compress: Option<Box<compress::ShardCompression>>,
    /// When accepting may resume after running out of descriptors.
    accept_paused_until: Option<Instant>,
    /// Which listeners' accepts ended for lack of descriptors (plain, TLS): only those
    /// are armed again when the pause ends (a second multishot accept on a listener
    /// that still has one would duplicate every completion).
    accept_paused: [bool; 2],
    /// One log rate limit per `driver::Noisy` kind, so a failure that recurs per turn
    /// or per client writes a few lines a second, not one per event.
    noisy: [crate::logging::RateLimit; driver::Noisy::ALL.len()],
    slots: Slab<Slot>,
    wheel: Wheel,
    metrics: ShardMetrics,
    /// The shard's read buffer: every socket is read into it, one at a time.
    buf: Vec<u8>,
    /// Scratch for building HTTP responses.
    scratch: Vec<u8>,
    /// The heartbeat ping, encoded once for the whole shard.
    ping: SharedFrame,
    completions: Vec<Completion>,
    fired: Vec<(u64, Key)>,
    /// Connections with output queued this turn.
    dirty: Vec<Key>,
    /// Connections that hit the read budget and have more to read.
    again: Vec<Key>,
    max_connections: usize,
    connections: usize,
    handshakes: usize,
    queued_total: usize,
    drain: Option<Drain>,
    /// The server's shards, which finish a drain together.
    drain_group: Arc<DrainGroup>,
    rng: u64,
    now: Instant,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("id", &self.id)
            .field("connections", &self.connections)
            .finish()
    }
}

/// What every shard of a server shares, read-only or behind its own locks.
#[derive(Clone, Debug)]
pub struct Shared {
    /// The configuration.
    pub cfg: Arc<Config>,
    /// Where shards publish their metrics.
    pub registry: Arc<Registry>,
    /// Checks the token of every upgrade request.
    pub auth: Arc<Authenticator>,
    /// Per-address limits.
    pub edge: Arc<Edge>,
    /// The drain every shard finishes together (`DrainGroup::new(cfg.shards)`).
    pub drain: Arc<DrainGroup>,
}

impl Shard {
    /// A shard serving `listener` (and `tls`: a TLS listener and the configuration its
    /// connections get), and the doorbell's far end its task waits on.
    pub fn new(
        id: usize,
        shared: Shared,
        listener: OwnedFd,
        tls: Option<(OwnedFd, Arc<TlsContext>)>,
        store: Option<MemStore>,
    ) -> std::io::Result<(Self, OwnedFd)> {
        let Shared {
            cfg,
            registry,
            auth,
            edge,
            drain: drain_group,
        } = shared;
        let (ring, bell_rx) = ConnRing::new(4096, 65536)?;
        let (tls_listener, tls) = match tls {
            Some((listener, context)) => (Some(listener), Some(context)),
            None => (None, None),
        };
        let max_connections = cfg.max_connections.div_ceil(cfg.shards);
        let now = Instant::now();
        let handle = Arc::new(ShardHandle::new(ring.bell()));
        let mut shard = Self {
            id,
            handshake: HandshakeConfig {
                paths: cfg.paths.clone(),
                allowed_origins: cfg.allowed_origins.clone(),
                subprotocols: {
                    // The messaging protocol is selected when a client offers it (and
                    // spoken to clients that offer none).
                    let mut protocols = cfg.subprotocols.clone();
                    if !cfg.echo && !protocols.iter().any(|p| p == protocol::SUBPROTOCOL_JSON) {
                        protocols.push(protocol::SUBPROTOCOL_JSON.to_owned());
                    }
                    protocols
                },
            },
            msg: (!cfg.echo).then(|| {
                let seed = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                MsgShard::with_store(
                    id as u16,
                    cfg.shards,
                    &cfg.msg,
                    store.unwrap_or_else(|| MemStore::new(&cfg.msg)),
                    seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                )
            }),
            journal: None,
            journal_stats: None,
            mesh: None,
            cluster: None,
            ring,
            handle,
            registry,
            auth,
            message_rate: MessageRate::new(edge.config()),
            edge,
            epoch: now,
            listener: Some(listener),
            tls_config: tls.as_ref().map(|context| context.current()),
            plain: if tls.is_some() {
                Vec::with_capacity(cfg.read_buffer_bytes)
            } else {
                Vec::new()
            },
            seal_buf: Vec::new(),
            compress: (cfg.compression == crate::config::CompressionMode::On).then(|| {
                Box::new(compress::ShardCompression::new(
                    cfg.compression_level,
                    cfg.compression_min_bytes,
                ))
            }),
            tls_listener,
            tls,
            accept_paused_until: None,
            accept_paused: [false; 2],
            noisy: driver::noisy_limits(),
            slots: Slab::with_capacity(max_connections + cfg.max_handshakes_per_shard),
            wheel: Wheel::new(now, cfg.tick, WHEEL_SLOTS),
            metrics: ShardMetrics::default(),
            buf: vec![0; cfg.read_buffer_bytes],
            scratch: Vec::with_capacity(512),
            ping: SharedFrame::new(OpCode::Ping, &[]),
            completions: Vec::with_capacity(COMPLETION_BATCH),
            fired: Vec::new(),
            dirty: Vec::new(),
            again: Vec::new(),
            max_connections,
            connections: 0,
            handshakes: 0,
            queued_total: 0,
            drain: None,
            drain_group,
            rng: 0x2545_f491_4f6c_dd1d ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            now,
            cfg,
        };
        shard.arm_accept();
        shard.ring.submit()?;
        Ok((shard, bell_rx))
    }

    /// The handle other threads use to reach this shard.
    pub fn handle(&self) -> Arc<ShardHandle> {
        self.handle.clone()
    }

    /// Gives the shard its ends of the cross-shard rings (once every shard exists).
    pub fn attach_mesh(&mut self, endpoint: Endpoint<MeshMsg>) {
        self.mesh = Some(endpoint);
    }
}
