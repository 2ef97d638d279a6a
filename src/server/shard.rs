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
//! Connections live in a slab (`slots`) reserved up front for the shard's connection cap
//! (reserved address space is not resident memory; pages are touched only as slots are
//! used). A connection is named by its slot index and the slot's generation, which
//! changes every time the slot is freed; ring completions and wheel entries carry both,
//! so a late completion for a closed connection can never reach the slot's next owner.
//! Lookups are an index, not a hash: the io_uring `user_data` carries the index.
//!
//! # What an idle connection holds
//!
//! A `Slot`: the protocol state machine (`proto::connection::Connection`), the fd, the
//! generation, the wheel tick and a few flags, and `io: None`. No buffer, no task, no
//! timer object. `Io` (request bytes during the handshake, the send queue, a deadline)
//! is allocated while it is needed and freed when it is empty again.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant, SystemTime};

use super::ring::{BELL_DATA, Bell, Completion, ConnRing, NOOP_DATA};
use super::wheel::{Entry, Wheel};
use crate::auth::{self, Authenticator};
use crate::config::Config;
use crate::edge::{self, ConnRef, Edge, IpAdmission, IpTicket, MessageRate, Refusal, UserTicket};
use crate::metrics::{Registry, ShardMetrics};
use crate::msg::ConnId;
use crate::msg::core::{MsgShard, Output};
use crate::msg::mesh::{Endpoint, MeshMsg};
use crate::msg::protocol::{self, Encoding, FrameKind};
use crate::proto::close::CloseCode;
use crate::proto::connection::{Connection, Event, Message, Timeout};
use crate::proto::frame::{OpCode, Role, SharedFrame};
use crate::proto::handshake::{self, HandshakeConfig, Status};
use crate::tls::{TlsContext, TlsSession};

/// `user_data` layout: kind in the top 2 bits, generation in the next 30, slot index in
/// the low 32.
const KIND_READ: u64 = 0;
const KIND_WRITE: u64 = 1 << 62;
const KIND_ACCEPT: u64 = 2 << 62;
const KIND_MASK: u64 = 3 << 62;
/// The accept request of the plain listener and of the TLS listener (the low bit tells
/// which listener a new socket came from).
const ACCEPT_PLAIN: u64 = KIND_ACCEPT;
const ACCEPT_TLS: u64 = KIND_ACCEPT | 1;
const GEN_MASK: u32 = (1 << 30) - 1;

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

/// The response to a connection refused before its request was read (too many
/// concurrent handshakes): a fixed string, so refusing costs no allocation.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 24\r\n\r\ntoo many handshakes now\n";

fn user_data(kind: u64, entry: Entry) -> u64 {
    kind | (u64::from(entry.gen_ & GEN_MASK) << 32) | u64::from(entry.slot)
}

/// The messaging layer's name for a connection: its slot and generation.
fn conn_of(entry: Entry) -> ConnId {
    ConnId(u64::from(entry.slot) | (u64::from(entry.gen_) << 32))
}

fn entry_of_conn(conn: ConnId) -> Entry {
    Entry {
        slot: conn.0 as u32,
        gen_: (conn.0 >> 32) as u32,
    }
}

fn entry_of(user_data: u64) -> Entry {
    Entry {
        slot: user_data as u32,
        gen_: ((user_data >> 32) as u32) & GEN_MASK,
    }
}

/// A command from another thread.
#[derive(Debug)]
pub enum Command {
    /// Stop accepting, close every connection with `code` spread over the drain window,
    /// and finish when all are closed or the drain deadline passes.
    Drain {
        /// 1001 (going away) or 1012 (service restart).
        code: CloseCode,
    },
    /// Close one connection with 1008: its user opened one more than the per-user limit
    /// allows and the newest wins (see `crate::edge`). Ignored if the slot's generation
    /// has moved on (the connection already ended).
    Kick {
        /// The slot on this shard.
        slot: u32,
        /// The slot's generation when the connection was admitted.
        gen_: u32,
    },
    /// A backend API request from the admin thread (`crate::admin`, through
    /// [`ApiShards`](super::ApiShards)): handed to messaging, whose owner answers on the
    /// request's channel. In echo mode it is dropped, which the admin side reports as
    /// 503.
    Api(Box<crate::msg::api::ApiRequest>),
}

/// Every shard's handle, filled in once all shards have started: how a shard reaches
/// another (today only to close a connection evicted by the per-user limit).
pub type Peers = Arc<OnceLock<Vec<Arc<ShardHandle>>>>;

/// The part of a shard other threads may touch: its inbox and its bell.
#[derive(Debug)]
pub struct ShardHandle {
    inbox: Mutex<Vec<Command>>,
    bell: Bell,
    /// Ticks the shard has run: the watchdog's sign of life (one relaxed store a tick).
    ticks: AtomicU64,
    /// Times the watchdog found the shard asleep past its ticks and woke it.
    watchdog_wakes: AtomicU64,
    /// The shard thread's kernel thread id (0 until it runs), for the watchdog to tell
    /// a shard that sleeps through its ticks from one that waits for a CPU.
    tid: AtomicI32,
    /// The waker of the shard's ticker task, set by the shard while it runs. Waking it
    /// from another thread goes through glommio's own cross-thread path (the executor's
    /// eventfd, which its reactor always watches while parked), the one wake-up that
    /// reaches an executor parked with runnable tasks (see `server::watchdog`).
    ticker: Mutex<Option<Waker>>,
}

impl ShardHandle {
    /// Delivers `command` and wakes the shard.
    pub fn send(&self, command: Command) {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).push(command);
        self.bell.ring();
    }

    /// The shard's doorbell (the mesh rings it when they bring messages).
    pub fn bell(&self) -> Bell {
        self.bell.clone()
    }

    /// Ticks run so far.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Wakes a shard that has missed its ticks (see `server::watchdog`): wakes its
    /// ticker task from this thread, which glommio turns into a write to the
    /// executor's eventfd, and rings the doorbell.
    pub fn kick(&self) {
        self.watchdog_wakes.fetch_add(1, Ordering::Relaxed);
        if let Some(waker) = &*self.ticker.lock().unwrap_or_else(|e| e.into_inner()) {
            waker.wake_by_ref();
        }
        self.bell.ring();
    }

    /// Times the watchdog woke this shard.
    pub fn watchdog_wakes(&self) -> u64 {
        self.watchdog_wakes.load(Ordering::Relaxed)
    }

    /// Rings the doorbell, as a completion of the connection ring would.
    #[cfg(test)]
    pub(crate) fn ring_for_test(&self) {
        self.bell.ring();
    }

    /// The shard thread's kernel thread id while its tasks run (not before it starts,
    /// not after it finishes).
    pub fn tid(&self) -> Option<i32> {
        Some(self.tid.load(Ordering::Relaxed)).filter(|&tid| tid > 0)
    }

    /// Called on the shard's thread when it starts running.
    pub(crate) fn set_tid(&self, tid: i32) {
        self.tid.store(tid, Ordering::Relaxed);
    }

    /// Keeps `waker` (the ticker task's) for [`ShardHandle::kick`]. Called on the
    /// shard's thread.
    pub(crate) fn set_ticker_waker(&self, waker: &Waker) {
        let mut slot = self.ticker.lock().unwrap_or_else(|e| e.into_inner());
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    /// Marks the shard finished and drops the ticker's waker. Called on the shard's
    /// thread before its executor ends, so that no other thread wakes, or drops, a task
    /// of a finished executor.
    pub(crate) fn finish(&self) {
        let waker = self.ticker.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(waker);
        self.tid.store(0, Ordering::Relaxed);
    }
}

/// Where a slot is in a connection's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not in use (on the free list).
    Free,
    /// Accepted; reading the HTTP upgrade request (or flushing a refusal).
    Handshake,
    /// Upgraded: WebSocket frames flow.
    Open,
    /// The WebSocket is finished (close handshake done, failed or timed out): flushing
    /// the last output, then lingering.
    Closing,
    /// Our side is finished and shut down for writing; waiting for the peer's EOF (so
    /// the last bytes we sent are not destroyed by a reset), up to the close timeout.
    Linger,
}

/// A queued chunk of output.
#[derive(Debug)]
enum Out {
    /// A WebSocket frame, possibly shared with other connections.
    Frame(SharedFrame),
    /// Raw bytes: the HTTP response of the handshake.
    Bytes(Box<[u8]>),
}

impl Out {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Frame(frame) => frame.as_bytes(),
            Self::Bytes(bytes) => bytes,
        }
    }
}

/// What a busy connection needs beyond its slot; `None` when idle.
#[derive(Debug, Default)]
struct Io {
    /// Upgrade request bytes received so far (only while they arrive in pieces).
    request: Vec<u8>,
    /// Output waiting for the socket, oldest first.
    queue: VecDeque<Out>,
    /// Bytes of the queue's first entry already written.
    head_written: usize,
    /// Bytes in `queue` not yet written (what the send-queue cap counts).
    queued_bytes: usize,
    /// Handshake or linger deadline.
    deadline: Option<Instant>,
    /// End the connection once the queue is flushed (a refused handshake).
    close_after_flush: bool,
}

impl Io {
    fn is_empty(&self) -> bool {
        self.request.capacity() == 0 && self.queue.is_empty() && self.deadline.is_none() && !self.close_after_flush
    }
}

/// One connection's slot.
#[derive(Debug)]
struct Slot {
    /// The WebSocket state machine (fresh and unused before the upgrade).
    ws: Connection,
    /// Buffers and deadlines of a busy connection.
    io: Option<Box<Io>>,
    /// The TLS session of a connection from the TLS listener (`None` for plain ones, so
    /// a plain slot pays one pointer for TLS).
    tls: Option<Box<TlsSession>>,
    /// The socket.
    fd: RawFd,
    /// Changes every time the slot is freed (30 bits used).
    gen_: u32,
    /// The wheel tick the slot is scheduled for, 0 when unscheduled.
    wheel_tick: u32,
    /// Where the connection is in its life.
    phase: Phase,
    /// A one-shot write-readiness poll is pending.
    write_armed: bool,
    /// The slot is on the shard's dirty list (has output to flush this turn).
    dirty: bool,
    /// The peer sent its close frame: once ours is out, the socket can be closed at
    /// once (the peer sends nothing more, so no lingering is needed).
    peer_closed: bool,
    /// The user's share of the per-user limit (`NONE` before the upgrade, with the
    /// limit off, and for generated anonymous ids, which nobody can address).
    user: UserTicket,
    /// The client address's share of the per-address limits, given back at the end.
    ip: IpTicket,
    /// The message-rate clock (`edge::MessageRate`): microseconds since the shard's
    /// epoch at which the next message is due.
    tat: u64,
}

impl Slot {
    fn new(now: Instant) -> Self {
        Self {
            ws: Connection::new(Role::Server, now),
            io: None,
            tls: None,
            fd: -1,
            gen_: 0,
            wheel_tick: 0,
            phase: Phase::Free,
            write_armed: false,
            dirty: false,
            peer_closed: false,
            user: UserTicket::NONE,
            ip: IpTicket::NONE,
            tat: 0,
        }
    }
}

/// Drain progress.
#[derive(Debug)]
struct Drain {
    /// The close code sent to clients.
    code: CloseCode,
    /// When the drain began.
    started: Instant,
    /// Open connections at the start, in random order: closed progressively over the
    /// drain window so clients do not all reconnect at once.
    order: Vec<Entry>,
    /// How many of `order` have been sent a close.
    next: usize,
}

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
    /// Per-address and per-user limits, shared by all shards (touched at upgrade and
    /// close only).
    edge: Arc<Edge>,
    /// The other shards, for evicting a connection held by one of them.
    peers: Peers,
    /// Messaging (`None` in echo mode): this shard's owner and local sides.
    msg: Option<MsgShard>,
    /// This shard's ends of the rings to and from every other shard.
    mesh: Option<Endpoint<MeshMsg>>,
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
    /// When accepting may resume after running out of descriptors.
    accept_paused_until: Option<Instant>,
    /// Which listeners' accepts ended for lack of descriptors (plain, TLS): only those
    /// are armed again when the pause ends (a second multishot accept on a listener
    /// that still has one would duplicate every completion).
    accept_paused: [bool; 2],
    slots: Vec<Slot>,
    free: Vec<u32>,
    wheel: Wheel,
    metrics: ShardMetrics,
    /// The shard's read buffer: every socket is read into it, one at a time.
    buf: Vec<u8>,
    /// Scratch for building HTTP responses.
    scratch: Vec<u8>,
    /// The heartbeat ping, encoded once for the whole shard.
    ping: SharedFrame,
    completions: Vec<Completion>,
    fired: Vec<(u64, Entry)>,
    /// Connections with output queued this turn.
    dirty: Vec<Entry>,
    /// Connections that hit the read budget and have more to read.
    again: Vec<Entry>,
    max_connections: usize,
    connections: usize,
    handshakes: usize,
    queued_total: usize,
    drain: Option<Drain>,
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
    /// Per-address and per-user limits.
    pub edge: Arc<Edge>,
    /// Every shard's handle, filled in once all have started.
    pub peers: Peers,
}

impl Shard {
    /// A shard serving `listener` (and `tls`: a TLS listener and the configuration its
    /// connections get), and the doorbell's far end its task waits on.
    pub fn new(
        id: usize,
        shared: Shared,
        listener: OwnedFd,
        tls: Option<(OwnedFd, Arc<TlsContext>)>,
    ) -> std::io::Result<(Self, OwnedFd)> {
        let Shared {
            cfg,
            registry,
            auth,
            edge,
            peers,
        } = shared;
        let (ring, bell_rx) = ConnRing::new(4096, 65536)?;
        let (tls_listener, tls) = match tls {
            Some((listener, context)) => (Some(listener), Some(context)),
            None => (None, None),
        };
        let max_connections = cfg.max_connections.div_ceil(cfg.shards);
        let now = Instant::now();
        let handle = Arc::new(ShardHandle {
            inbox: Mutex::new(Vec::new()),
            bell: ring.bell(),
            ticks: AtomicU64::new(0),
            watchdog_wakes: AtomicU64::new(0),
            tid: AtomicI32::new(0),
            ticker: Mutex::new(None),
        });
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
                MsgShard::new(
                    id as u16,
                    cfg.shards,
                    &cfg.msg,
                    seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                )
            }),
            mesh: None,
            ring,
            handle,
            registry,
            auth,
            message_rate: MessageRate::new(edge.config()),
            edge,
            peers,
            epoch: now,
            listener: Some(listener),
            tls_config: tls.as_ref().map(|context| context.current()),
            plain: if tls.is_some() {
                Vec::with_capacity(cfg.read_buffer_bytes)
            } else {
                Vec::new()
            },
            seal_buf: Vec::new(),
            tls_listener,
            tls,
            accept_paused_until: None,
            accept_paused: [false; 2],
            slots: Vec::with_capacity(max_connections + cfg.max_handshakes_per_shard),
            free: Vec::new(),
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

    /// Whether the shard speaks the messaging protocol (not in echo mode).
    pub fn messaging(&self) -> bool {
        self.msg.is_some()
    }

    /// Takes what other shards sent (start of a turn and every tick).
    fn recv_mesh(&mut self) {
        if let (Some(msg), Some(mesh)) = (self.msg.as_mut(), self.mesh.as_mut()) {
            msg.recv_mesh(mesh, self.now, MESH_RECV_BATCH);
        }
    }

    /// Sends what messaging produced: cross-shard messages onto the rings, frames onto
    /// the connections' send queues (shared, encoded once), closes to the connections
    /// that broke the protocol.
    fn flush_messaging(&mut self) {
        let Some(msg) = self.msg.as_mut() else { return };
        if let Some(mesh) = self.mesh.as_mut() {
            msg.flush_mesh(mesh, self.now);
        }
        while let Some(output) = self.msg.as_mut().and_then(MsgShard::poll_output) {
            match output {
                Output::Send { conn, frame } => {
                    let entry = entry_of_conn(conn);
                    if self.valid(entry)
                        && self.slots[entry.slot as usize].phase == Phase::Open
                        && self.slots[entry.slot as usize].ws.can_send()
                    {
                        self.metrics.messages_out += 1;
                        self.enqueue(entry, Out::Frame(frame), false);
                    }
                }
                Output::Close { conn, code, reason } => {
                    let entry = entry_of_conn(conn);
                    if self.valid(entry) && self.slots[entry.slot as usize].phase == Phase::Open {
                        self.slots[entry.slot as usize]
                            .ws
                            .close(self.now, &self.cfg.limits, code, reason);
                        self.after_protocol(entry);
                    }
                }
            }
        }
        if self.mesh.as_ref().is_some_and(|mesh| mesh.pending() > 0) {
            // Messages wait for room on a ring: come back soon rather than at the tick.
            self.handle.bell.ring();
        }
    }

    fn arm_accept(&mut self) {
        self.arm_accept_on(ACCEPT_PLAIN);
        self.arm_accept_on(ACCEPT_TLS);
    }

    fn arm_accept_on(&mut self, which: u64) {
        let listener = if which == ACCEPT_TLS {
            &self.tls_listener
        } else {
            &self.listener
        };
        if let Some(listener) = listener {
            let fd = listener.as_raw_fd();
            self.ring.accept_multi(fd, which);
        }
    }

    /// Runs one turn after the doorbell rang: commands, completions, deferred reads,
    /// then writes.
    pub fn on_wake(&mut self) -> ShardState {
        self.now = Instant::now();
        self.ring.arm_bell();
        let commands = std::mem::take(&mut *self.handle.inbox.lock().unwrap_or_else(|e| e.into_inner()));
        for command in commands {
            match command {
                Command::Drain { code } => self.start_drain(code),
                Command::Kick { slot, gen_ } => self.evict(Entry { slot, gen_ }),
                Command::Api(request) => {
                    if let Some(msg) = self.msg.as_mut() {
                        msg.handle_api(*request, self.now);
                    }
                }
            }
        }
        self.recv_mesh();
        let again = std::mem::take(&mut self.again);
        for entry in again {
            if self.valid(entry) {
                self.on_readable(entry, true);
            }
        }
        self.drain_ring();
        self.end_turn()
    }

    /// Handles every completion the ring holds.
    fn drain_ring(&mut self) {
        loop {
            self.completions.clear();
            self.ring.drain(&mut self.completions, COMPLETION_BATCH);
            if self.completions.is_empty() {
                break;
            }
            for i in 0..self.completions.len() {
                let completion = self.completions[i];
                self.on_completion(completion);
            }
        }
    }

    /// Runs the timer tick: deadlines, drain progress, accept back-off, metrics. It also
    /// handles whatever the ring holds, so the shard makes progress every tick even if
    /// a wake-up were lost (belt and braces: the doorbell is re-armed on failure and
    /// overflowed completions are flushed, but a stalled shard is the worst failure a
    /// gateway can have).
    pub fn on_tick(&mut self) -> ShardState {
        self.now = Instant::now();
        self.handle.ticks.fetch_add(1, Ordering::Relaxed);
        self.recv_mesh();
        if let Some(msg) = self.msg.as_mut() {
            msg.handle_tick(self.now);
        }
        self.drain_ring();
        let now = self.now;
        self.fired.clear();
        self.wheel.advance(now, &mut self.fired);
        let fired = std::mem::take(&mut self.fired);
        for &(tick, entry) in &fired {
            if self.valid(entry) && u64::from(self.slots[entry.slot as usize].wheel_tick) == tick {
                self.slots[entry.slot as usize].wheel_tick = 0;
                self.on_deadline(entry);
                if self.valid(entry) {
                    self.schedule(entry);
                }
            }
        }
        self.fired = fired;
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
            for which in [ACCEPT_PLAIN, ACCEPT_TLS] {
                if std::mem::take(&mut self.accept_paused[(which & 1) as usize]) {
                    self.arm_accept_on(which);
                }
            }
        }
        self.drain_step();
        self.publish_metrics();
        self.end_turn()
    }

    fn end_turn(&mut self) -> ShardState {
        self.flush_messaging();
        let dirty = std::mem::take(&mut self.dirty);
        for entry in &dirty {
            if self.valid(*entry) {
                self.slots[entry.slot as usize].dirty = false;
                self.flush(*entry);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
        if !self.again.is_empty() {
            // Deferred reads: come back after the executor has run other tasks.
            self.handle.bell.ring();
        }
        if let Err(e) = self.ring.submit() {
            eprintln!("shard {}: io_uring submit failed: {e}", self.id);
        }
        match &self.drain {
            Some(drain) if self.live_slots() == 0 || self.now >= drain.started + self.cfg.drain_timeout => {
                self.abort_all();
                self.publish_metrics();
                ShardState::Finished
            }
            _ => ShardState::Running,
        }
    }

    fn live_slots(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn valid(&self, entry: Entry) -> bool {
        self.slots
            .get(entry.slot as usize)
            .is_some_and(|slot| slot.gen_ == entry.gen_ && slot.phase != Phase::Free)
    }

    fn entry(&self, slot: u32) -> Entry {
        Entry {
            slot,
            gen_: self.slots[slot as usize].gen_,
        }
    }

    fn on_completion(&mut self, completion: Completion) {
        match completion.user_data {
            NOOP_DATA => return,
            BELL_DATA => {
                // The doorbell pair failed (its successes post nothing): without a new
                // one the shard would only wake on its tick.
                if completion.result != -libc::ECANCELED {
                    self.ring.arm_bell();
                }
                return;
            }
            _ => {}
        }
        match completion.user_data & KIND_MASK {
            KIND_ACCEPT => self.on_accept(completion),
            KIND_READ => {
                let entry = entry_of(completion.user_data);
                if !self.valid(entry) {
                    return;
                }
                if completion.result < 0 && completion.result != -libc::ECANCELED {
                    self.release(entry, true);
                    return;
                }
                if !completion.more {
                    // The kernel ended the multishot poll (it may, e.g. on overflow):
                    // arm it again.
                    let fd = self.slots[entry.slot as usize].fd;
                    self.ring.poll_read_multi(fd, user_data(KIND_READ, entry));
                }
                // The poll result is the ready mask. A hang-up or error must be read to the
                // end: io_uring coalesces wake-ups, so data and FIN arriving together give
                // one completion, and stopping at the short read of the data would leave
                // the EOF unseen until some later event.
                let hangup = (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) as i32;
                let to_end = completion.result > 0 && completion.result & hangup != 0;
                self.on_readable(entry, to_end);
            }
            KIND_WRITE => {
                let entry = entry_of(completion.user_data);
                if self.valid(entry) {
                    self.slots[entry.slot as usize].write_armed = false;
                    self.flush(entry);
                }
            }
            _ => {}
        }
    }

    fn on_accept(&mut self, completion: Completion) {
        let which = completion.user_data;
        if !completion.more && self.listener.is_some() && self.drain.is_none() {
            if completion.result == -libc::EMFILE || completion.result == -libc::ENFILE {
                self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
                self.accept_paused[(which & 1) as usize] = true;
            } else {
                self.arm_accept_on(which);
            }
        }
        if completion.result < 0 {
            let label = match -completion.result {
                libc::EMFILE | libc::ENFILE => "out_of_files",
                libc::ECANCELED => return,
                _ => "accept_error",
            };
            ShardMetrics::bump(&mut self.metrics.handshake_failures, label);
            return;
        }
        let fd = completion.result;
        self.metrics.accepted += 1;
        if self.drain.is_some() || self.handshakes >= self.cfg.max_handshakes_per_shard {
            let label = if self.drain.is_some() {
                "draining"
            } else {
                "handshake_limit"
            };
            ShardMetrics::bump(&mut self.metrics.handshake_failures, label);
            // SAFETY: `fd` was just accepted and is owned by nobody else; the response
            // is a static buffer; the fd is closed right after. A TLS client would read
            // plaintext as garbage, so it only sees the connection close.
            unsafe {
                if which != ACCEPT_TLS {
                    libc::send(
                        fd,
                        BUSY_RESPONSE.as_ptr().cast(),
                        BUSY_RESPONSE.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    );
                }
                libc::close(fd);
            }
            return;
        }
        let tls = if which == ACCEPT_TLS {
            match self.new_tls_session() {
                Some(session) => Some(session),
                None => {
                    // SAFETY: `fd` was just accepted and is owned by nobody else.
                    unsafe { libc::close(fd) };
                    return;
                }
            }
        } else {
            None
        };
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on our own socket with a pointer to a live c_int. Nagle's
        // algorithm would hold back small messages; a messaging gateway wants them out.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let now = self.now;
        let slot = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot::new(now));
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        debug_assert_eq!(s.phase, Phase::Free);
        s.fd = fd;
        s.phase = Phase::Handshake;
        if tls.is_some() {
            self.metrics.tls_sessions += 1;
        }
        s.tls = tls;
        s.io = Some(Box::new(Io {
            deadline: Some(now + self.cfg.handshake_timeout),
            ..Io::default()
        }));
        self.handshakes += 1;
        let entry = self.entry(slot);
        self.ring.poll_read_multi(fd, user_data(KIND_READ, entry));
        self.schedule(entry);
    }

    /// Reads what the socket has. A short read normally means the socket is drained;
    /// with `to_end` (the poll saw a hang-up) reading goes on until EOF or EAGAIN.
    fn on_readable(&mut self, entry: Entry, to_end: bool) {
        if self.slots[entry.slot as usize].tls.is_some() {
            self.on_tls_readable(entry, to_end);
            return;
        }
        let mut budget = READ_BUDGET_BYTES;
        loop {
            let fd = self.slots[entry.slot as usize].fd;
            // SAFETY: reads into the shard's buffer, which is valid for its length.
            let n = unsafe { libc::recv(fd, self.buf.as_mut_ptr().cast(), self.buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR) => continue,
                    _ => {
                        self.on_eof(entry);
                        return;
                    }
                }
            }
            if n == 0 {
                self.on_eof(entry);
                return;
            }
            let n = n as usize;
            self.metrics.bytes_in += n as u64;
            match self.slots[entry.slot as usize].phase {
                Phase::Handshake => self.on_request_bytes(entry, n),
                Phase::Open => self.on_frame_bytes(entry, 0, n),
                Phase::Closing | Phase::Linger => {}
                Phase::Free => unreachable!("read on a free slot"),
            }
            if !self.valid(entry) || (n < self.buf.len() && !to_end) {
                return;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                self.again.push(entry);
                return;
            }
        }
    }

    /// A session for a connection accepted on the TLS listener, with the configuration
    /// in force (re-read only when a reload changed it). `None` (counted) if rustls
    /// cannot make one.
    fn new_tls_session(&mut self) -> Option<Box<TlsSession>> {
        let context = self.tls.as_ref()?;
        let generation = context.generation();
        if self.tls_config.as_ref().is_none_or(|(cached, _)| *cached != generation) {
            self.tls_config = Some(context.current());
        }
        let (_, config) = self.tls_config.as_ref()?;
        match TlsSession::new(config.clone()) {
            Ok(session) => Some(Box::new(session)),
            Err(error) => {
                ShardMetrics::bump(&mut self.metrics.tls_handshake_failures, error.label());
                None
            }
        }
    }

    /// Reads a TLS connection: ciphertext lands in `buf` behind the unfinished record
    /// kept from the last read, the session decrypts it, and the plaintext goes through
    /// the same handshake and frame code as a plain connection's bytes (by swapping it
    /// into `buf`).
    fn on_tls_readable(&mut self, entry: Entry, to_end: bool) {
        let index = entry.slot as usize;
        let mut budget = READ_BUDGET_BYTES;
        loop {
            let slot = &mut self.slots[index];
            let fd = slot.fd;
            let tls = slot.tls.as_deref_mut().expect("a TLS slot");
            let kept = tls.partial_len();
            let room = self.buf.len() - kept;
            if room == 0 {
                // Unfinished input fills the whole read buffer: a handshake message
                // spread over many records that no real client sends (a ClientHello is
                // a few KB). Refuse it rather than read 0 bytes and call it EOF.
                ShardMetrics::bump(&mut self.metrics.tls_handshake_failures, "too_large");
                tls.abandon();
                self.tls_failed(entry);
                continue;
            }
            // SAFETY: reads into the shard's buffer behind the kept bytes; the pointer
            // and length stay inside the buffer.
            let n = unsafe { libc::recv(fd, self.buf.as_mut_ptr().add(kept).cast(), room, libc::MSG_DONTWAIT) };
            if n <= 0 {
                if n < 0 {
                    match std::io::Error::last_os_error().raw_os_error() {
                        Some(libc::EAGAIN) => return,
                        Some(libc::EINTR) => continue,
                        _ => {}
                    }
                }
                if !tls.is_established() && self.slots[index].phase == Phase::Handshake {
                    ShardMetrics::bump(&mut self.metrics.tls_handshake_failures, "eof");
                }
                self.on_eof(entry);
                return;
            }
            let n = n as usize;
            self.metrics.bytes_in += n as u64;
            if tls.is_failed() {
                // Only the alert and the linger are left: input is discarded.
                if n < room && !to_end {
                    return;
                }
                budget = budget.saturating_sub(n);
                if budget == 0 {
                    self.again.push(entry);
                    return;
                }
                continue;
            }
            tls.take_partial(&mut self.buf);
            self.plain.clear();
            let was_established = tls.is_established();
            let result = tls.handle_ciphertext(&mut self.buf[..kept + n], &mut self.plain);
            if tls.wants_transmit() {
                self.mark_dirty(entry);
            }
            let input = match result {
                Ok(input) => input,
                Err(error) => {
                    let label = if was_established {
                        "after_handshake"
                    } else {
                        error.label()
                    };
                    ShardMetrics::bump(&mut self.metrics.tls_handshake_failures, label);
                    self.tls_failed(entry);
                    return;
                }
            };
            if let Some(info) = input.handshake_done {
                ShardMetrics::bump(&mut self.metrics.tls_handshakes, info.version);
                self.metrics.tls_resumed += u64::from(info.resumed);
            }
            let plain = self.plain.len();
            if plain > 0 {
                std::mem::swap(&mut self.buf, &mut self.plain);
                match self.slots[index].phase {
                    Phase::Handshake => self.on_request_bytes(entry, plain),
                    Phase::Open => self.on_frame_bytes(entry, 0, plain),
                    Phase::Closing | Phase::Linger => {}
                    Phase::Free => unreachable!("read on a free slot"),
                }
                std::mem::swap(&mut self.buf, &mut self.plain);
            }
            if !self.valid(entry) {
                return;
            }
            if input.peer_closed {
                // close_notify: the peer sends nothing more, as with a FIN.
                self.on_eof(entry);
                return;
            }
            if n < room && !to_end {
                return;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                self.again.push(entry);
                return;
            }
        }
    }

    /// The TLS session failed: drop queued data, send rustls' alert (if any), then
    /// close like a refused handshake (linger for the peer's EOF, up to the close
    /// timeout).
    fn tls_failed(&mut self, entry: Entry) {
        self.leave_open(entry);
        let close_timeout = self.cfg.limits.close_timeout;
        let now = self.now;
        let slot = &mut self.slots[entry.slot as usize];
        let io = slot.io.get_or_insert_with(Box::default);
        for out in io.queue.drain(..) {
            let len = out.as_bytes().len();
            self.queued_total -= len;
        }
        io.queued_bytes = 0;
        io.head_written = 0;
        io.request = Vec::new();
        io.close_after_flush = true;
        io.deadline = Some(now + close_timeout);
        self.mark_dirty(entry);
        self.schedule(entry);
    }

    fn on_eof(&mut self, entry: Entry) {
        let slot = &mut self.slots[entry.slot as usize];
        let abnormal = match slot.phase {
            Phase::Open => !slot.ws.handle_eof(),
            Phase::Handshake | Phase::Closing => true,
            Phase::Linger | Phase::Free => false,
        };
        self.release(entry, abnormal);
    }

    /// Handshake bytes arrived in `buf[..n]`.
    fn on_request_bytes(&mut self, entry: Entry, n: usize) {
        let index = entry.slot as usize;
        let max = self.cfg.limits.max_header_bytes;
        let fd = self.slots[index].fd;
        let io = self.slots[index].io.as_deref_mut().expect("a handshaking slot has io");
        if io.close_after_flush {
            return; // Refused already: ignore what else it sends.
        }
        let from_buf = io.request.is_empty();
        if !from_buf {
            // Keep at most one byte over the limit: enough for the parser to say 431.
            let room = (max + 1).saturating_sub(io.request.len());
            io.request.extend_from_slice(&self.buf[..n.min(room)]);
        }
        let data: &[u8] = if from_buf { &self.buf[..n] } else { &io.request };
        enum Verdict {
            NeedMore,
            Refuse(&'static str),
            Upgrade {
                leftover: Vec<u8>,
                user: UserTicket,
                ip: IpTicket,
                evict: Option<ConnRef>,
                identity: Box<auth::Identity>,
                encoding: Encoding,
            },
        }
        let conn = ConnRef {
            shard: self.id as u32,
            slot: entry.slot,
            gen_: entry.gen_,
        };
        self.scratch.clear();
        let verdict = match handshake::parse_request(data, &self.cfg.limits, &self.handshake) {
            Ok(None) => Verdict::NeedMore,
            Err(error) => {
                error.write_response(&mut self.scratch);
                Verdict::Refuse(error.label())
            }
            Ok(Some(_)) if self.drain.is_some() => {
                let status = Status::ServiceUnavailable;
                handshake::write_error_response(&mut self.scratch, status, "server draining", &[("Retry-After", "1")]);
                Verdict::Refuse("draining")
            }
            Ok(Some(_)) if self.connections >= self.max_connections => {
                let status = Status::ServiceUnavailable;
                handshake::write_error_response(&mut self.scratch, status, "connection limit", &[("Retry-After", "1")]);
                Verdict::Refuse("connection_limit")
            }
            Ok(Some(request)) => {
                // Edge limits before the token check: a flood from one address must not
                // buy signature verifications.
                // The peer is only looked up when a per-address limit needs it.
                let peer = if self.edge.config().tracks_ips() {
                    peer_ip(fd)
                } else {
                    None
                };
                let client = peer.map(|ip| self.edge.client_ip(ip, request.forwarded_for()));
                let admitted = match client {
                    Some(ip) => self.edge.admit_ip(ip, self.now),
                    None => Ok(IpAdmission {
                        ticket: IpTicket::NONE,
                        untracked: false,
                    }),
                };
                match admitted {
                    Err(refusal) => {
                        refuse_at_edge(&mut self.scratch, &mut self.metrics, refusal);
                        Verdict::Refuse(refusal.label())
                    }
                    Ok(admission) => {
                        if admission.untracked {
                            ShardMetrics::bump(&mut self.metrics.limit_hits, "ip_table_full");
                        }
                        match self.auth.authenticate(&request, SystemTime::now()) {
                            Err(error) => {
                                self.edge.release_ip(admission.ticket);
                                ShardMetrics::bump(&mut self.metrics.auth_failures, error.label());
                                auth::write_unauthorized(&mut self.scratch, error);
                                Verdict::Refuse("unauthorized")
                            }
                            Ok(identity) => {
                                let per_user = if identity.generated {
                                    Ok((UserTicket::NONE, None))
                                } else {
                                    self.edge.admit_user(&identity.user_id, conn)
                                };
                                match per_user {
                                    Err(refusal) => {
                                        self.edge.release_ip(admission.ticket);
                                        refuse_at_edge(&mut self.scratch, &mut self.metrics, refusal);
                                        Verdict::Refuse(refusal.label())
                                    }
                                    Ok((user, evict)) => {
                                        if evict.is_some() {
                                            ShardMetrics::bump(&mut self.metrics.limit_hits, "user_replaced");
                                        }
                                        ShardMetrics::bump(&mut self.metrics.auth_accepted, identity.carrier.label());
                                        request.write_response(&mut self.scratch);
                                        Verdict::Upgrade {
                                            leftover: data[request.header_len()..].to_vec(),
                                            user,
                                            ip: admission.ticket,
                                            evict,
                                            encoding: Encoding::from_subprotocol(request.selected_protocol())
                                                .unwrap_or(Encoding::Json),
                                            identity: Box::new(identity),
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        match verdict {
            Verdict::NeedMore => {
                if from_buf {
                    let io = self.slots[index].io.as_deref_mut().expect("handshaking slot has io");
                    io.request.extend_from_slice(&self.buf[..n.min(max + 1)]);
                }
            }
            Verdict::Refuse(label) => {
                ShardMetrics::bump(&mut self.metrics.handshake_failures, label);
                let response = self.scratch.as_slice().into();
                let close_timeout = self.cfg.limits.close_timeout;
                let io = self.slots[index].io.as_deref_mut().expect("handshaking slot has io");
                io.request = Vec::new();
                io.close_after_flush = true;
                io.deadline = Some(self.now + close_timeout);
                self.enqueue(entry, Out::Bytes(response), true);
            }
            Verdict::Upgrade {
                leftover,
                user,
                ip,
                evict,
                identity,
                encoding,
            } => {
                let response = self.scratch.as_slice().into();
                let slot = &mut self.slots[index];
                slot.ws = Connection::new(Role::Server, self.now);
                slot.phase = Phase::Open;
                slot.user = user;
                slot.ip = ip;
                slot.tat = 0;
                let io = slot.io.as_deref_mut().expect("handshaking slot has io");
                io.request = Vec::new();
                io.deadline = None;
                self.handshakes -= 1;
                self.connections += 1;
                self.metrics.upgrades += 1;
                self.enqueue(entry, Out::Bytes(response), true);
                self.schedule(entry);
                if let Some(victim) = evict {
                    self.evict_anywhere(victim);
                }
                if let Some(msg) = self.msg.as_mut() {
                    msg.handle_connect(conn_of(entry), &identity, encoding, self.now);
                }
                if !leftover.is_empty() {
                    // Frames sent right behind the request: feed them as if just read.
                    self.buf[..leftover.len()].copy_from_slice(&leftover);
                    self.on_frame_bytes(entry, 0, leftover.len());
                }
            }
        }
    }

    /// Frame bytes arrived in `buf[start..end]` for an open connection.
    fn on_frame_bytes(&mut self, entry: Entry, start: usize, end: usize) {
        let index = entry.slot as usize;
        let mut off = start;
        while off < end {
            let echo = self.cfg.echo;
            let slot = &mut self.slots[index];
            let sending = slot.ws.can_send();
            let (used, event) = slot
                .ws
                .handle_input(self.now, &self.cfg.limits, &mut self.buf[off..end]);
            let Some(event) = event else { break };
            off += used;
            let reply = match event {
                Event::Message(_) if !sending => {
                    // We are closing (e.g. over the message rate): what still arrives
                    // is read for the close handshake but not acted on.
                    None
                }
                Event::Message(message) => {
                    self.metrics.messages_in += 1;
                    if let Some(limit) = self.message_rate
                        && !limit.allow(&mut slot.tat, edge::micros_since(self.epoch, self.now))
                    {
                        ShardMetrics::bump(&mut self.metrics.limit_hits, "message_rate");
                        slot.ws.close(
                            self.now,
                            &self.cfg.limits,
                            CloseCode::POLICY_VIOLATION,
                            "message rate exceeded",
                        );
                        continue;
                    }
                    if let Some(msg) = self.msg.as_mut() {
                        // Messaging: what it answers comes out of `flush_messaging` at
                        // the end of the turn, batched with everything else.
                        let (kind, payload) = match &message {
                            Message::Text(text) => (FrameKind::Text, text.as_bytes()),
                            Message::Binary(bytes) => (FrameKind::Binary, &bytes[..]),
                        };
                        msg.handle_client_frame(conn_of(entry), kind, payload, self.now);
                        None
                    } else {
                        echo.then(|| match &message {
                            Message::Text(text) => SharedFrame::new(OpCode::Text, text.as_bytes()),
                            Message::Binary(bytes) => SharedFrame::new(OpCode::Binary, bytes),
                        })
                    }
                }
                Event::Close { code, .. } => {
                    slot.peer_closed = true;
                    let code = code.map_or(CloseCode::NO_STATUS.0, |c| c.0);
                    ShardMetrics::bump(&mut self.metrics.close_codes_received, code);
                    None
                }
                Event::Error(error) => {
                    ShardMetrics::bump(&mut self.metrics.protocol_errors, error.label());
                    None
                }
            };
            self.metrics.frames_in += u64::from(self.slots[index].ws.take_frames_in());
            if let Some(frame) = reply
                && self.slots[index].ws.can_send()
            {
                self.metrics.messages_out += 1;
                self.enqueue(entry, Out::Frame(frame), false);
            }
        }
        self.after_protocol(entry);
    }

    /// Collects the control frames the state machine wants sent, reschedules its
    /// deadline, and moves a finished connection towards its end.
    fn after_protocol(&mut self, entry: Entry) {
        let index = entry.slot as usize;
        while let Some(control) = self.slots[index].ws.poll_transmit() {
            if control.opcode() == OpCode::Close {
                let bytes = control.as_bytes();
                let code = if bytes.len() >= 4 {
                    u16::from_be_bytes([bytes[2], bytes[3]])
                } else {
                    1005
                };
                ShardMetrics::bump(&mut self.metrics.close_codes_sent, code);
            }
            // The heartbeat ping is the same two bytes for everyone: share one copy, and
            // when nothing else is queued write it at once, so a heartbeat round over a
            // million idle connections allocates nothing (no `Io`, no queue).
            let frame = if control.as_bytes() == self.ping.as_bytes() {
                if self.ping_directly(entry) {
                    continue;
                }
                self.ping.clone()
            } else {
                SharedFrame::from_wire(control.as_bytes())
            };
            self.enqueue(entry, Out::Frame(frame), true);
        }
        if self.slots[index].ws.is_closed() {
            self.leave_open(entry);
            let slot = &mut self.slots[index];
            let io = slot.io.get_or_insert_with(Box::default);
            io.close_after_flush = true;
            io.deadline = Some(self.now + self.cfg.limits.close_timeout);
            self.mark_dirty(entry);
        }
        self.schedule(entry);
    }

    /// Writes the shared ping straight to an idle connection's socket. False (nothing
    /// written) when output is queued or pending, or the socket does not take the whole
    /// frame now: then it is queued like any frame.
    fn ping_directly(&mut self, entry: Entry) -> bool {
        let slot = &self.slots[entry.slot as usize];
        if slot.io.as_deref().is_some_and(|io| !io.queue.is_empty()) || slot.write_armed {
            return false;
        }
        let bytes = self.ping.as_bytes();
        // SAFETY: a non-blocking send of a live buffer on our own socket. Two bytes into
        // an empty send buffer are taken whole or not at all (EAGAIN) in practice; a
        // short write is still handled below by never claiming success for it.
        let sent = unsafe {
            libc::send(
                slot.fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(sent) {
            Ok(n) if n == bytes.len() => {
                self.metrics.frames_out += 1;
                self.metrics.bytes_out += n as u64;
                true
            }
            Ok(0) | Err(_) => false,
            Ok(n) => {
                // Part of the frame is out: the rest must follow before anything else.
                self.metrics.frames_out += 1;
                self.metrics.bytes_out += n as u64;
                let rest: Box<[u8]> = bytes[n..].into();
                self.enqueue(entry, Out::Bytes(rest), true);
                true
            }
        }
    }

    /// Counts a connection out of the open set (once).
    fn leave_open(&mut self, entry: Entry) {
        let slot = &mut self.slots[entry.slot as usize];
        if slot.phase == Phase::Open {
            slot.phase = Phase::Closing;
            self.connections -= 1;
            self.metrics.closed += 1;
            self.forget_peer(entry);
        }
    }

    /// Gives the connection's share of the per-address and per-user limits back.
    fn forget_peer(&mut self, entry: Entry) {
        if let Some(msg) = self.msg.as_mut() {
            msg.handle_disconnect(conn_of(entry), self.now);
        }
        let slot = &mut self.slots[entry.slot as usize];
        self.edge.release_ip(std::mem::take(&mut slot.ip));
        let user = std::mem::take(&mut slot.user);
        let conn = ConnRef {
            shard: self.id as u32,
            slot: entry.slot,
            gen_: entry.gen_,
        };
        self.edge.release_user(user, conn);
    }

    /// Closes a connection the per-user limit evicted, on whichever shard holds it.
    fn evict_anywhere(&mut self, victim: ConnRef) {
        let entry = Entry {
            slot: victim.slot,
            gen_: victim.gen_,
        };
        if victim.shard as usize == self.id {
            self.evict(entry);
        } else if let Some(peer) = self.peers.get().and_then(|peers| peers.get(victim.shard as usize)) {
            peer.send(Command::Kick {
                slot: victim.slot,
                gen_: victim.gen_,
            });
        }
    }

    /// Closes `entry` with 1008 because a newer connection of its user replaced it.
    fn evict(&mut self, entry: Entry) {
        if !self.valid(entry) || self.slots[entry.slot as usize].phase != Phase::Open {
            return;
        }
        self.slots[entry.slot as usize].ws.close(
            self.now,
            &self.cfg.limits,
            CloseCode::POLICY_VIOLATION,
            "replaced by a newer connection",
        );
        self.after_protocol(entry);
    }

    fn mark_dirty(&mut self, entry: Entry) {
        let slot = &mut self.slots[entry.slot as usize];
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(entry);
        }
    }

    /// Queues output. Data beyond the connection's cap (or the shard's budget) invokes
    /// the slow-consumer policy; control output (handshake responses, pong, ping,
    /// close) is never refused, and it is bounded by the protocol (one of each at a
    /// time).
    fn enqueue(&mut self, entry: Entry, out: Out, control: bool) {
        let len = out.as_bytes().len();
        let index = entry.slot as usize;
        let io = self.slots[index].io.get_or_insert_with(Box::default);
        if !control
            && (io.queued_bytes + len > self.cfg.send_queue_bytes
                || self.queued_total + len > self.cfg.shard_send_budget_bytes)
        {
            self.slow_consumer(entry);
            return;
        }
        io.queue.push_back(out);
        io.queued_bytes += len;
        self.queued_total += len;
        self.mark_dirty(entry);
    }

    /// The slow-consumer policy: the client does not read what it is sent. Drop its
    /// queued data (all but a frame already partly written, which must be finished to
    /// keep the stream intact), send close 1008 "slow consumer", and give the close
    /// frame the close timeout to get out; then the socket is closed.
    fn slow_consumer(&mut self, entry: Entry) {
        self.metrics.slow_consumer_closes += 1;
        let index = entry.slot as usize;
        let slot = &mut self.slots[index];
        if let Some(io) = slot.io.as_deref_mut() {
            let keep = usize::from(io.head_written > 0);
            for out in io.queue.drain(keep..) {
                let len = out.as_bytes().len();
                io.queued_bytes -= len;
                self.queued_total -= len;
            }
        }
        slot.ws
            .close(self.now, &self.cfg.limits, CloseCode::POLICY_VIOLATION, "slow consumer");
        self.after_protocol(entry);
    }

    /// Writes as much of the queue as the socket takes, many frames per syscall.
    fn flush(&mut self, entry: Entry) {
        let index = entry.slot as usize;
        if self.slots[index].write_armed {
            return;
        }
        if self.slots[index].tls.is_some() {
            self.flush_tls(entry);
            return;
        }
        loop {
            let slot = &mut self.slots[index];
            let Some(io) = slot.io.as_deref_mut() else { return };
            if io.queue.is_empty() {
                break;
            }
            let mut iov = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; IOV_BATCH];
            let mut count = 0;
            let mut total = 0;
            for (i, out) in io.queue.iter().take(IOV_BATCH).enumerate() {
                let bytes = if i == 0 {
                    &out.as_bytes()[io.head_written..]
                } else {
                    out.as_bytes()
                };
                iov[i] = libc::iovec {
                    iov_base: bytes.as_ptr().cast_mut().cast(),
                    iov_len: bytes.len(),
                };
                count += 1;
                total += bytes.len();
            }
            // SAFETY: a zeroed msghdr is valid; it points at `iov`, whose entries point
            // into queued buffers that stay alive (and unmoved) for the call.
            let sent = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = count;
                libc::sendmsg(slot.fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
            if sent < 0 {
                if self.send_failed(entry) {
                    continue;
                }
                return;
            }
            let mut left = sent as usize;
            self.metrics.bytes_out += left as u64;
            while left > 0 {
                let head = io
                    .queue
                    .front()
                    .expect("bytes were sent from the queue")
                    .as_bytes()
                    .len();
                let rest = head - io.head_written;
                if left >= rest {
                    left -= rest;
                    let out = io.queue.pop_front().expect("checked above");
                    if matches!(out, Out::Frame(_)) {
                        self.metrics.frames_out += 1;
                    }
                    io.queued_bytes -= head;
                    self.queued_total -= head;
                    io.head_written = 0;
                } else {
                    io.head_written += left;
                    left = 0;
                }
            }
            if (sent as usize) < total {
                self.wait_writable(entry);
                return;
            }
        }
        self.after_flush(entry);
    }

    /// Everything queued is out: finish a closing connection, or free an empty `Io`.
    fn after_flush(&mut self, entry: Entry) {
        let index = entry.slot as usize;
        let slot = &mut self.slots[index];
        let finished = slot.io.as_deref().is_some_and(|io| io.close_after_flush);
        if finished && slot.peer_closed {
            self.release(entry, false);
        } else if finished {
            self.start_linger(entry);
        } else if slot.io.as_deref().is_some_and(Io::is_empty) {
            slot.io = None;
        }
    }

    /// [`Self::flush`] for a TLS connection: queued plaintext is sealed in batches into
    /// the session's output (which exists only while it holds ciphertext) and written
    /// from there; close_notify follows the last record of a finished connection.
    fn flush_tls(&mut self, entry: Entry) {
        let index = entry.slot as usize;
        loop {
            let slot = &mut self.slots[index];
            let tls = slot.tls.as_deref_mut().expect("a TLS slot");
            if let Some(io) = slot.io.as_deref_mut()
                && tls.is_established()
                && !tls.close_sent()
                && tls.poll_transmit().len() < TLS_SEAL_BATCH_BYTES
            {
                self.seal_buf.clear();
                while let Some(out) = io.queue.front() {
                    let len = out.as_bytes().len();
                    if !self.seal_buf.is_empty() && self.seal_buf.len() + len > TLS_SEAL_BATCH_BYTES {
                        break;
                    }
                    self.seal_buf.extend_from_slice(out.as_bytes());
                    let out = io.queue.pop_front().expect("peeked above");
                    if matches!(out, Out::Frame(_)) {
                        self.metrics.frames_out += 1;
                    }
                    io.queued_bytes -= len;
                    self.queued_total -= len;
                }
                if !self.seal_buf.is_empty() && tls.seal(&self.seal_buf).is_err() {
                    self.release(entry, true);
                    return;
                }
                if self.seal_buf.capacity() > 4 * TLS_SEAL_BATCH_BYTES {
                    // One huge message passed through: do not keep its buffer.
                    self.seal_buf = Vec::new();
                }
                if io.queue.is_empty() && io.close_after_flush && tls.poll_transmit().len() < TLS_SEAL_BATCH_BYTES {
                    tls.close();
                }
            }
            let pending = tls.poll_transmit();
            if pending.is_empty() {
                break;
            }
            // SAFETY: sends from the session's output buffer, valid for its length.
            let sent = unsafe {
                libc::send(
                    slot.fd,
                    pending.as_ptr().cast(),
                    pending.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if sent < 0 {
                if self.send_failed(entry) {
                    continue;
                }
                return;
            }
            let sent = sent as usize;
            let short = sent < pending.len();
            tls.consume_transmit(sent);
            self.metrics.bytes_out += sent as u64;
            if short {
                self.wait_writable(entry);
                return;
            }
        }
        let queued = self.slots[index].io.as_deref().is_some_and(|io| !io.queue.is_empty());
        if queued {
            // Not sealable (the handshake is still running): wait for it.
            return;
        }
        self.after_flush(entry);
    }

    /// After a failed send (errno still fresh): waits for writability on EAGAIN, asks
    /// for a retry on EINTR (true), ends the connection on anything else.
    fn send_failed(&mut self, entry: Entry) -> bool {
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => {
                self.wait_writable(entry);
                false
            }
            Some(libc::EINTR) => true,
            _ => {
                self.release(entry, true);
                false
            }
        }
    }

    /// The socket took less than it was offered: flush again once it is writable.
    fn wait_writable(&mut self, entry: Entry) {
        let slot = &mut self.slots[entry.slot as usize];
        slot.write_armed = true;
        self.ring.poll_write_once(slot.fd, user_data(KIND_WRITE, entry));
    }

    /// Our side is done: shut down writing so the peer sees our last bytes and an EOF,
    /// then wait (up to the close timeout) for the peer to close its side.
    fn start_linger(&mut self, entry: Entry) {
        let index = entry.slot as usize;
        let slot = &mut self.slots[index];
        if slot.phase == Phase::Handshake {
            self.handshakes -= 1;
        }
        slot.phase = Phase::Linger;
        // SAFETY: shutdown on our own socket.
        unsafe {
            libc::shutdown(slot.fd, libc::SHUT_WR);
        }
        let io = slot.io.get_or_insert_with(Box::default);
        io.close_after_flush = false;
        io.deadline = Some(self.now + self.cfg.limits.close_timeout);
        self.schedule(entry);
    }

    /// Frees the slot: stops the polls, closes the socket, drops queued output.
    fn release(&mut self, entry: Entry, abnormal: bool) {
        let index = entry.slot as usize;
        let slot = &mut self.slots[index];
        match slot.phase {
            Phase::Free => return,
            Phase::Handshake => self.handshakes -= 1,
            Phase::Open => {
                self.connections -= 1;
                self.metrics.closed += 1;
                self.forget_peer(entry);
            }
            Phase::Closing | Phase::Linger => {}
        }
        let slot = &mut self.slots[index];
        if abnormal {
            self.metrics.abnormal_closes += 1;
        }
        self.ring.poll_remove(user_data(KIND_READ, entry));
        if slot.write_armed {
            self.ring.poll_remove(user_data(KIND_WRITE, entry));
        }
        // SAFETY: the fd is ours and is forgotten right after; the pending polls hold
        // their own file references until the removals above complete.
        unsafe {
            libc::close(slot.fd);
        }
        if let Some(io) = slot.io.take() {
            self.queued_total -= io.queued_bytes;
        }
        if slot.tls.take().is_some() {
            self.metrics.tls_sessions -= 1;
        }
        slot.fd = -1;
        slot.phase = Phase::Free;
        slot.write_armed = false;
        slot.dirty = false;
        slot.peer_closed = false;
        slot.tat = 0;
        slot.wheel_tick = 0;
        slot.gen_ = (slot.gen_ + 1) & GEN_MASK;
        slot.ws = Connection::new(Role::Server, self.now);
        self.free.push(entry.slot);
    }

    /// The slot's earliest deadline.
    fn deadline(&self, entry: Entry) -> Option<Instant> {
        let slot = &self.slots[entry.slot as usize];
        let io_deadline = slot.io.as_deref().and_then(|io| io.deadline);
        match slot.phase {
            Phase::Open => {
                let ws = slot.ws.poll_timeout(&self.cfg.limits);
                match (ws, io_deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Phase::Handshake | Phase::Closing | Phase::Linger => io_deadline,
            Phase::Free => None,
        }
    }

    /// Puts the slot on the wheel if its deadline is earlier than the tick it waits
    /// for (later deadlines are found lazily when that tick fires).
    fn schedule(&mut self, entry: Entry) {
        let Some(at) = self.deadline(entry) else { return };
        let tick = self.wheel.tick_of(at);
        let slot = &self.slots[entry.slot as usize];
        if slot.wheel_tick == 0 || tick < u64::from(slot.wheel_tick) {
            let used = self.wheel.schedule(at, entry);
            self.slots[entry.slot as usize].wheel_tick = used as u32;
        }
    }

    fn on_deadline(&mut self, entry: Entry) {
        let now = self.now;
        let index = entry.slot as usize;
        let io_due = self.slots[index]
            .io
            .as_deref()
            .and_then(|io| io.deadline)
            .is_some_and(|d| now >= d);
        match self.slots[index].phase {
            Phase::Handshake => {
                if io_due {
                    let refused = self.slots[index].io.as_deref().is_some_and(|io| io.close_after_flush);
                    if !refused {
                        self.metrics.handshake_timeouts += 1;
                        ShardMetrics::bump(&mut self.metrics.handshake_failures, "handshake_timeout");
                        if self.slots[index]
                            .tls
                            .as_deref()
                            .is_some_and(|tls| !tls.is_established())
                        {
                            ShardMetrics::bump(&mut self.metrics.tls_handshake_failures, "timeout");
                        }
                    }
                    self.release(entry, !refused);
                }
            }
            Phase::Closing | Phase::Linger => {
                if io_due {
                    self.release(entry, false);
                }
            }
            Phase::Open => match self.slots[index].ws.handle_timeout(now, &self.cfg.limits) {
                Some(Timeout::Heartbeat) => {
                    self.metrics.heartbeat_timeouts += 1;
                    self.after_protocol(entry);
                }
                Some(Timeout::Close) => {
                    self.metrics.close_timeouts += 1;
                    self.release(entry, true);
                }
                None => self.after_protocol(entry),
            },
            Phase::Free => {}
        }
    }

    fn start_drain(&mut self, code: CloseCode) {
        if self.drain.is_some() {
            return;
        }
        if let Some(listener) = self.listener.take() {
            self.ring.cancel(ACCEPT_PLAIN);
            drop(listener);
        }
        if let Some(listener) = self.tls_listener.take() {
            self.ring.cancel(ACCEPT_TLS);
            drop(listener);
        }
        let mut order: Vec<Entry> = (0..self.slots.len() as u32)
            .filter(|&i| self.slots[i as usize].phase == Phase::Open)
            .map(|i| self.entry(i))
            .collect();
        // Fisher-Yates with xorshift: which client goes first does not matter, only
        // that reconnects spread out.
        for i in (1..order.len()).rev() {
            let j = (self.next_random() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        self.drain = Some(Drain {
            code,
            started: self.now,
            order,
            next: 0,
        });
        self.drain_step();
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Sends close frames to the share of connections whose turn has come.
    fn drain_step(&mut self) {
        let Some(drain) = &self.drain else { return };
        let window = self.cfg.drain_window.as_secs_f64();
        let elapsed = self.now.saturating_duration_since(drain.started).as_secs_f64();
        let share = if window <= 0.0 {
            1.0
        } else {
            (elapsed / window).min(1.0)
        };
        let due = ((drain.order.len() as f64) * share).ceil() as usize;
        let (code, from) = (drain.code, drain.next);
        for i in from..due {
            let entry = self.drain.as_ref().expect("draining").order[i];
            if self.valid(entry) && self.slots[entry.slot as usize].phase == Phase::Open {
                self.slots[entry.slot as usize]
                    .ws
                    .close(self.now, &self.cfg.limits, code, "server draining");
                self.after_protocol(entry);
            }
        }
        if let Some(drain) = self.drain.as_mut() {
            drain.next = due.max(drain.next);
        }
    }

    /// The drain deadline passed (or the shard is finished): close every socket left.
    fn abort_all(&mut self) {
        for i in 0..self.slots.len() as u32 {
            let entry = self.entry(i);
            if self.valid(entry) {
                self.release(entry, true);
            }
        }
        let _ = self.ring.submit();
    }

    fn publish_metrics(&mut self) {
        self.metrics.connections = self.connections as u64;
        self.metrics.handshakes_in_progress = self.handshakes as u64;
        self.metrics.queued_bytes = self.queued_total as u64;
        self.metrics.watchdog_wakes = self.handle.watchdog_wakes.load(Ordering::Relaxed);
        if let Some(msg) = &self.msg {
            self.metrics.msg.clone_from(msg.metrics());
            self.metrics.msg_users = msg.hub().users() as u64;
            self.metrics.msg_rooms = msg.hub().rooms() as u64;
            self.metrics.msg_owned_users_online = msg.owner().online_users() as u64;
            self.metrics.msg_owned_rooms = msg.owner().occupied_rooms() as u64;
        }
        if let Some(mesh) = &self.mesh {
            self.metrics.mesh_pending = mesh.pending() as u64;
        }
        #[cfg(test)]
        {
            self.metrics.test_heap_bytes = crate::testalloc::thread_live_bytes();
        }
        self.registry.publish(self.id, &self.metrics);
    }
}

/// The peer address of a connected socket (`None` if it is already gone).
fn peer_ip(fd: RawFd) -> Option<IpAddr> {
    // SAFETY: `fd` is an open socket owned by the calling shard for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let addr = socket2::SockRef::from(&fd).peer_addr().ok()?;
    Some(addr.as_socket()?.ip())
}

/// Writes the 429 for an edge refusal and counts it.
fn refuse_at_edge(out: &mut Vec<u8>, metrics: &mut ShardMetrics, refusal: Refusal) {
    ShardMetrics::bump(&mut metrics.limit_hits, refusal.label());
    let status = Status::TooManyRequests;
    match refusal {
        Refusal::UpgradeRate { retry_after_secs } => {
            let secs = retry_after_secs.to_string();
            handshake::write_error_response(out, status, refusal.reason(), &[("Retry-After", &secs)]);
        }
        Refusal::ConnectionsPerIp | Refusal::ConnectionsPerUser => {
            handshake::write_error_response(out, status, refusal.reason(), &[]);
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// The slot is what every idle connection costs in user space (besides the kernel's
    /// share): a guard against it growing by accident.
    #[test]
    fn a_slot_stays_within_its_budget() {
        let size = size_of::<super::Slot>();
        eprintln!("Slot is {size} bytes");
        assert!(size <= 128, "Slot grew to {size} bytes");
    }
}
