//! One bench worker: a plain thread with its own connection ring, driving a share of
//! the client connections from `connect()` to the close handshake.
//!
//! # Why plain threads and the server's ring
//!
//! The client side must cost as little per connection as the server side, or the bench
//! runs out of memory before the gateway does. So it is built the same way: one
//! [`ConnRing`] per worker (multishot `POLL_ADD` for reads, one-shot `POLL_ADD` for
//! writes; an idle socket costs one kernel poll entry), a slab of small `Slot`s, one
//! read buffer per worker, and a timer check per turn. No task, no future, no buffer per
//! connection.
//!
//! The worker is a plain thread, not a glommio executor: the only thing it ever waits
//! on is the ring's doorbell with a timeout (the next connect due or the tick), which one
//! `ppoll` does, so an executor would add a second ring, its reserved memory and a
//! scheduler for a single task. Workers are not pinned: the bench usually shares the box
//! with the gateway, whose shards are pinned, and the kernel places unpinned workers
//! around them better than a fixed CPU list would.
//!
//! # Why one long file (about 1,600 lines before its tests)
//!
//! The worker is one state machine over one slab: every completion handler reads and
//! writes the same `Slot`, the same deadline queues and the same counters, and the
//! states of a connection follow each other in the order below, which is the order of
//! this file. Split by job the way the server's shard is, each piece would need most of
//! the others' fields; the mode-specific protocol (fan-out and direct) already lives in
//! `fan.rs`, and the slab and its keys in `crate::slab`, shared with the server.
//!
//! # Data flow
//!
//! Input: ring completions (socket writable: connected or output drained; socket
//! readable), the shared [`Control`] (phase set by the coordinating thread, measurement
//! window), and the clock (connect pacing, the two deadline queues). Output: bytes on
//! sockets, the [`Progress`] counters (published once per turn) and, at the end, a
//! [`WorkerReport`].
//!
//! # A connection's life
//!
//! `Connecting` (non-blocking `connect()`, waiting for writable) → `Handshake` (upgrade
//! request sent, reading the response until the 101 with the right
//! `Sec-WebSocket-Accept`) → `Open` (idle in density; echoes flowing in echo; the
//! `wsgate.v1.json` exchange of fan-out and direct, see `fan`) →
//! `Closing` (our close 1000 sent, or the server's close answered; waiting for the
//! server's close frame and its end of the TCP stream) → freed. The server closes TCP
//! first after a clean close handshake, so TIME_WAIT stays on its side and the bench's
//! source ports are free again for the next run.
//!
//! # Deadlines
//!
//! Every connection's connect deadline is `start + connect_timeout` and every close
//! deadline is `close_sent + close_timeout`: each is a constant added to a clock that
//! only moves forward, so each queue is already in deadline order and a `VecDeque` does
//! the work of a timer wheel: one comparison per turn when nothing is due. Entries are
//! only dropped when due, so the connect queue holds at most rate × connect timeout
//! entries (16 bytes each) and the close queue one per connection.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hdrhistogram::Histogram;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::Target;
use super::sources::SourceIps;
use super::url::Assign;
use crate::limits::Limits;
use crate::proto::close::CloseCode;
use crate::proto::connection::{Connection, Event, Message};
use crate::proto::deflate::{EXTENSION, Inflater};
use crate::proto::handshake::{ExtensionList, accept_key};
use crate::server::ring::{BELL_DATA, Completion, ConnRing};
use crate::slab::{Generational, Key, Slab};

mod fan;
pub(crate) use fan::request_with_user;
pub use fan::{FanoutPlan, FanoutStats, MAX_TRACKED_MESSAGES};

/// `user_data` layout, as in the server: kind in the top 2 bits, then the slab key
/// ([`Key::to_user_data`]: generation in the next 30 bits, slot index in the low 32).
const KIND_READ: u64 = 0;
const KIND_WRITE: u64 = 1 << 62;
const KIND_MASK: u64 = 3 << 62;

/// Submission slots of each worker's ring (a full queue is submitted and reused).
const RING_ENTRIES: u32 = 4096;
/// Completion slots; bursts beyond wait in the kernel (IORING_FEAT_NODROP). The ring's
/// pages are resident once used, so this is kept well below the server's 65,536: 256 KiB
/// per worker.
const RING_CQ_ENTRIES: u32 = 16_384;
/// Completions handled per batch; the loop repeats until the ring is empty.
const COMPLETION_BATCH: usize = 4096;
/// The worker's read buffer: every socket read lands here.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Bytes one connection may read in one turn before the others get their turn.
const READ_BUDGET_BYTES: usize = 256 * 1024;
/// Longest wait between turns: phase changes and deadlines are seen within this.
pub const TICK: Duration = Duration::from_millis(20);
/// Connections in `Connecting` or `Handshake` at once per worker. Beyond it the worker
/// waits for some to finish before starting more (the achieved rate shows it), so a
/// stalled server cannot make the bench open sockets without bound.
pub const MAX_PENDING_HANDSHAKES: usize = 8192;
/// Connections started per turn at most, so a worker that fell behind its schedule
/// catches up in steps and keeps reading meanwhile.
const MAX_STARTS_PER_TURN: usize = 1024;
/// Bytes of HTTP response head accepted before the response is called bad.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;
/// Response headers parsed at most (the gateway sends five or six).
const MAX_RESPONSE_HEADERS: usize = 32;
/// Output waiting for a socket, per connection. The protocol bounds it well below this
/// (a request, or `in_flight` messages and two control frames); hitting it means the
/// server stopped reading, and the connection is failed (`send_backlog`).
const MAX_PENDING_OUT_BYTES: usize = 64 * 1024 * 1024;
/// The latency histograms cover 1 ns to this, with three significant digits.
const HISTOGRAM_MAX_NS: u64 = 60_000_000_000;

/// The phases, set by the coordinating thread in [`Control::phase`].
pub const PHASE_RAMP: u8 = 0;
/// Ramp over: no more connects. Density holds; echo sends within the window.
pub const PHASE_RUN: u8 = 1;
/// Close every connection cleanly (1000), then finish.
pub const PHASE_CLOSE: u8 = 2;

/// Now on `CLOCK_MONOTONIC`, in nanoseconds: the clock [`Instant`] reads on Linux, and
/// one every process on the host shares, so a publish stamped by one bench process is
/// timed by another's subscribers (`bench fanout --publishers 0`).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into a live local; CLOCK_MONOTONIC
    // always exists on Linux, so it cannot fail.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts);
    }
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// What the coordinator tells the workers. Times are nanoseconds on `CLOCK_MONOTONIC`
/// ([`mono_ns`]).
#[derive(Debug)]
pub struct Control {
    /// An instant paired with [`Control::epoch_ns`], to turn an [`Instant`] into ns.
    pub epoch: Instant,
    /// [`mono_ns`] read at `epoch`.
    pub epoch_ns: u64,
    /// [`PHASE_RAMP`], [`PHASE_RUN`] or [`PHASE_CLOSE`].
    pub phase: AtomicU8,
    /// Echo: first sends happen at or after this (warm-up start).
    pub send_from_ns: AtomicU64,
    /// Echo: round trips are measured when sent at or after this...
    pub measure_from_ns: AtomicU64,
    /// ... and received before this; no message is sent after it.
    pub measure_until_ns: AtomicU64,
}

impl Control {
    /// A control block in the ramp phase, with its clock starting now.
    pub fn new() -> Self {
        let before = mono_ns();
        let epoch = Instant::now();
        let after = mono_ns();
        Self {
            epoch,
            epoch_ns: before + (after - before) / 2,
            phase: AtomicU8::new(PHASE_RAMP),
            send_from_ns: AtomicU64::new(u64::MAX),
            measure_from_ns: AtomicU64::new(u64::MAX),
            measure_until_ns: AtomicU64::new(u64::MAX),
        }
    }

    /// `at` on the [`mono_ns`] clock (through the epoch pair; `at` before the epoch
    /// counts as the epoch).
    pub fn ns(&self, at: Instant) -> u64 {
        self.epoch_ns + at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Now, on the [`mono_ns`] clock.
    pub fn now_ns(&self) -> u64 {
        mono_ns()
    }
}

impl Default for Control {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters one worker publishes every turn for the progress line. On its own cache
/// lines so workers do not slow each other down.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Progress {
    /// Connects started.
    pub started: AtomicU64,
    /// Upgrades completed (101 verified).
    pub established: AtomicU64,
    /// Attempts that failed before the upgrade.
    pub failed: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Echoes received in total.
    pub echoes: AtomicU64,
    /// Echo messages sent and not yet answered.
    pub in_flight: AtomicU64,
    /// Fan-out: `welcome`s received.
    pub welcomed: AtomicU64,
    /// Fan-out: `joined`s received.
    pub joined: AtomicU64,
    /// Fan-out: `room_msg`s received.
    pub deliveries: AtomicU64,
    /// Fan-out: publishes sent.
    pub published: AtomicU64,
    /// Fan-out: publishes acked.
    pub acked: AtomicU64,
    /// The worker has finished.
    pub done: AtomicBool,
}

/// Echo traffic of a worker's connections.
#[derive(Clone, Copy, Debug)]
pub struct EchoPlan {
    /// Payload bytes per message.
    pub size: usize,
    /// Messages each connection keeps in flight.
    pub in_flight: usize,
    /// Text frames (else binary).
    pub text: bool,
}

/// Everything a worker needs to run; made by the coordinator.
#[derive(Clone, Debug)]
pub struct Plan {
    /// This worker's number, from 0.
    pub index: usize,
    /// Workers in the run: connection numbers of this worker are `index + j × workers`.
    pub workers: usize,
    /// Connections this worker opens.
    pub connections: u64,
    /// Connects per second this worker starts.
    pub rate: f64,
    /// The gateways (one or more): address, upgrade request up to the key (the key and
    /// `\r\n\r\n` follow) and TLS server name.
    pub targets: Arc<[Target]>,
    /// Which target connection number `id` goes to.
    pub assign: Assign,
    /// Local addresses to bind, round-robin by connection number.
    pub sources: Option<Arc<SourceIps>>,
    /// wss://: the client configuration (each target has its server name).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Each connection a user of its own (`bench density`), or `None`.
    pub identities: Option<Arc<super::Identities>>,
    /// From `connect()` to the verified 101; beyond, the attempt fails as a timeout.
    pub connect_timeout: Duration,
    /// From our close frame to the server's EOF.
    pub close_timeout: Duration,
    /// The worker releases everything and stops at this instant, whatever the phase.
    pub hard_deadline: Instant,
    /// Seeds the handshake keys and masking keys.
    pub seed: u64,
    /// Echo traffic, or `None` for idle connections (density).
    pub echo: Option<EchoPlan>,
    /// Fan-out traffic (room members and publishers), or `None`.
    pub fanout: Option<FanoutPlan>,
    /// The upgrade requests offer permessage-deflate (`--compression`): a 101 that
    /// agrees turns it on for its connection. Without the offer, an agreement is refused.
    pub compression: bool,
}

/// Echo figures of one worker.
#[derive(Debug, Clone)]
pub struct EchoStats {
    /// Messages sent.
    pub sent: u64,
    /// Echoes received.
    pub received: u64,
    /// Echoes inside the measurement window.
    pub measured: u64,
    /// Round-trip times of the measured echoes, nanoseconds.
    pub rtt_ns: Histogram<u64>,
    /// Echoes whose payload or type differed from what was sent.
    pub mismatches: u64,
    /// Messages still unanswered when their connection closed.
    pub unanswered: u64,
}

/// What a worker hands back when it finishes.
#[derive(Debug, Clone)]
pub struct WorkerReport {
    /// Connects started.
    pub started: u64,
    /// Upgrades completed.
    pub established: u64,
    /// Attempts cut short by the close phase (Ctrl-C, ramp limit) or the hard deadline.
    pub aborted: u64,
    /// Failed attempts by reason (`connect_refused`, `status_503`, ...).
    pub failures: BTreeMap<String, u64>,
    /// Open connections ended before we closed them, by how (`server_close_1001`,
    /// `eof`, `reset`, ...).
    pub dropped: BTreeMap<String, u64>,
    /// Connections we closed whose close handshake completed and whose TCP stream the
    /// server then ended.
    pub closed_clean: u64,
    /// Closes we started that did not end cleanly, by reason.
    pub close_failures: BTreeMap<String, u64>,
    /// Protocol errors by the server, by label.
    pub protocol_errors: BTreeMap<String, u64>,
    /// Data messages received in density mode (the gateway sends none unprompted).
    pub unexpected_messages: u64,
    /// Upgrades whose 101 agreed to permessage-deflate (`--compression`).
    pub compression_agreed: u64,
    /// Compressed messages received and inflated.
    pub compressed_messages: u64,
    /// `connect()` to verified 101, nanoseconds.
    pub handshake_ns: Histogram<u64>,
    /// When the last upgrade completed (ns, CLOCK_MONOTONIC).
    pub last_established_ns: Option<u64>,
    /// Echo figures (empty in density mode).
    pub echo: EchoStats,
    /// Fan-out figures (empty unless fan-out).
    pub fanout: FanoutStats,
    /// The worker stopped at its hard deadline rather than by finishing.
    pub hard_deadline_hit: bool,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_NS, 3).expect("valid histogram bounds")
}

impl WorkerReport {
    fn new() -> Self {
        Self {
            started: 0,
            established: 0,
            aborted: 0,
            failures: BTreeMap::new(),
            dropped: BTreeMap::new(),
            closed_clean: 0,
            close_failures: BTreeMap::new(),
            protocol_errors: BTreeMap::new(),
            unexpected_messages: 0,
            compression_agreed: 0,
            compressed_messages: 0,
            handshake_ns: histogram(),
            last_established_ns: None,
            echo: EchoStats {
                sent: 0,
                received: 0,
                measured: 0,
                rtt_ns: histogram(),
                mismatches: 0,
                unanswered: 0,
            },
            fanout: FanoutStats::new(),
            hard_deadline_hit: false,
        }
    }

    /// Adds another worker's figures to these.
    pub fn merge(&mut self, other: &Self) {
        let add = |into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>| {
            for (k, v) in from {
                *into.entry(k.clone()).or_default() += v;
            }
        };
        self.started += other.started;
        self.established += other.established;
        self.aborted += other.aborted;
        add(&mut self.failures, &other.failures);
        add(&mut self.dropped, &other.dropped);
        self.closed_clean += other.closed_clean;
        add(&mut self.close_failures, &other.close_failures);
        add(&mut self.protocol_errors, &other.protocol_errors);
        self.unexpected_messages += other.unexpected_messages;
        self.compression_agreed += other.compression_agreed;
        self.compressed_messages += other.compressed_messages;
        self.handshake_ns
            .add(&other.handshake_ns)
            .expect("histograms with the same bounds merge");
        self.last_established_ns = self.last_established_ns.max(other.last_established_ns);
        self.echo.sent += other.echo.sent;
        self.echo.received += other.echo.received;
        self.echo.measured += other.echo.measured;
        self.echo
            .rtt_ns
            .add(&other.echo.rtt_ns)
            .expect("histograms with the same bounds merge");
        self.echo.mismatches += other.echo.mismatches;
        self.echo.unanswered += other.echo.unanswered;
        self.fanout.merge(&other.fanout);
        self.hard_deadline_hit |= other.hard_deadline_hit;
    }

    /// An empty report, to merge worker reports into.
    pub fn empty() -> Self {
        Self::new()
    }
}

fn bump(map: &mut BTreeMap<String, u64>, label: impl Into<String>) {
    *map.entry(label.into()).or_default() += 1;
}

/// Where a slot is in its connection's life (a free slot holds no `Slot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// `connect()` issued; waiting for the socket to become writable.
    Connecting,
    /// The upgrade request is sent (or being sent); waiting for the 101.
    Handshake,
    /// Upgraded.
    Open,
    /// A close frame went out (ours, or our answer to the server's); waiting for the
    /// close handshake to finish and the server to end the TCP stream.
    Closing,
}

/// Per-connection echo state: what is in flight, in order (the echo preserves it).
#[derive(Debug)]
struct EchoConn {
    /// Send times (ns, CLOCK_MONOTONIC) of the messages in flight, oldest first; at most
    /// `in_flight` entries.
    sent_ns: VecDeque<u64>,
    /// Sequence number of the next message to send.
    next_send: u64,
    /// Sequence number of the next echo expected.
    next_recv: u64,
}

/// What a busy connection needs beyond its slot; `None` when idle.
#[derive(Debug, Default)]
struct Busy {
    /// Response head received so far (only while it arrives in pieces).
    head: Vec<u8>,
    /// Bytes the socket did not take yet, oldest first.
    out: Vec<u8>,
    /// Echo state (echo mode only, for the connection's whole open life).
    echo: Option<EchoConn>,
    /// Fan-out state (fan-out mode only, for the connection's whole open life).
    fan: Option<fan::FanConn>,
}

impl Busy {
    fn is_empty(&self) -> bool {
        self.head.capacity() == 0 && self.out.is_empty() && self.echo.is_none() && self.fan.is_none()
    }
}

/// One connection: what an idle one costs the bench (about 120 bytes, no heap).
#[derive(Debug)]
struct Slot {
    /// The protocol core in the client role (answers pings, frames the close).
    ws: Connection,
    /// Buffers of a busy connection.
    busy: Option<Box<Busy>>,
    /// wss://: the connection's TLS state (rustls' buffered client).
    tls: Option<Box<rustls::ClientConnection>>,
    /// The socket (dropping the slot closes it).
    sock: Option<Socket>,
    /// When `connect()` was called (ns, CLOCK_MONOTONIC), for the handshake latency.
    started_ns: u64,
    /// Connection number (source address, handshake key and payload pattern derive
    /// from it).
    id: u64,
    /// The slot's generation, kept here for the slab (`Generational`: it fills what would
    /// be padding); only the slab sets it.
    generation: u32,
    state: State,
    /// A one-shot write poll is armed.
    write_armed: bool,
    /// We started the close (else the server did).
    we_closed: bool,
}

impl Generational for Slot {
    fn generation(&self) -> u32 {
        self.generation
    }

    fn set_generation(&mut self, generation: u32) {
        self.generation = generation;
    }
}

/// The ring's request tag for `entry`: `kind` in the top 2 bits, the slab key below.
fn user_data(kind: u64, entry: Key) -> u64 {
    kind | entry.to_user_data()
}

/// A worker's whole state.
struct Worker {
    plan: Plan,
    control: Arc<Control>,
    progress: Arc<Progress>,
    ring: ConnRing,
    bell: UnixStream,
    limits: Limits,
    /// The connections, named by their slab key (slot and generation, as carried in
    /// `user_data`, so late completions are recognised).
    slots: Slab<Slot>,
    /// Connect deadlines (ns), in order.
    connect_deadlines: VecDeque<(u64, Key)>,
    /// Close deadlines (ns), in order.
    close_deadlines: VecDeque<(u64, Key)>,
    buf: Vec<u8>,
    /// Output being built for one connection.
    scratch: Vec<u8>,
    /// `--compression`: inflates every connection's compressed messages (the server
    /// agrees to `server_no_context_takeover`, so each stands alone), made at the first.
    inflater: Option<Inflater>,
    /// The message being inflated (one per worker, reused).
    inflated: Vec<u8>,
    /// wss://: ciphertext on its way to `send_raw`, and the plaintext of one read.
    tls_out: Vec<u8>,
    plain: Vec<u8>,
    completions: Vec<Completion>,
    /// Connections that used their read budget with data left: read again next turn.
    again: Vec<Key>,
    /// Payload source: printable ASCII, `size + PATTERN_PERIOD` bytes; message `(id,
    /// seq)` is the slice at `(id × 7 + seq × 13) % PATTERN_PERIOD`.
    pattern: Vec<u8>,
    report: WorkerReport,
    /// Connections started by this worker (the next connection is number `index +
    /// started × workers`).
    started: u64,
    /// Connections in `Connecting` or `Handshake`.
    pending: usize,
    /// Connections in `Open`.
    open: u64,
    /// Echo messages in flight on all connections.
    in_flight: u64,
    /// Echo: the first messages have been sent.
    echo_started: bool,
    /// Fan-out: this worker's publishers that were welcomed.
    publishers: Vec<Key>,
    /// Fan-out: server messages read in one `on_frame_bytes`, handled after it.
    fan_events: Vec<crate::bench::wire::Incoming<'static>>,
    /// The close phase has been entered (every open connection closed).
    closing: bool,
    /// When the ramp started.
    ramp_start: Instant,
    now: Instant,
    now_ns: u64,
    /// Measurement window (ns, CLOCK_MONOTONIC), read from `Control` each turn.
    measure_from_ns: u64,
    measure_until_ns: u64,
}

/// Period of the payload pattern (the printable ASCII characters).
const PATTERN_PERIOD: usize = 94;

/// Runs a worker to the end and returns its figures. `ready` is called once the ring
/// exists, and the ramp starts when it returns (the coordinator's barrier).
pub fn run(
    plan: Plan,
    control: Arc<Control>,
    progress: Arc<Progress>,
    ready: impl FnOnce(),
) -> io::Result<WorkerReport> {
    let (ring, bell) = ConnRing::new(RING_ENTRIES, RING_CQ_ENTRIES)?;
    let bell = UnixStream::from(bell);
    bell.set_nonblocking(true)?;
    let mut limits = Limits::default();
    if let Some(echo) = plan.echo {
        limits.max_frame_bytes = limits.max_frame_bytes.max(echo.size as u64);
        limits.max_message_bytes = limits.max_message_bytes.max(echo.size as u64);
    }
    if let Some(fanout) = &plan.fanout {
        // Room messages are the publish body plus the envelope.
        let room_msg = fanout.size as u64 + 4096;
        limits.max_frame_bytes = limits.max_frame_bytes.max(room_msg);
        limits.max_message_bytes = limits.max_message_bytes.max(room_msg);
    }
    let pattern = match plan.echo {
        Some(echo) => (0..echo.size + PATTERN_PERIOD)
            .map(|i| b'!' + (i % PATTERN_PERIOD) as u8)
            .collect(),
        None => Vec::new(),
    };
    let now = Instant::now();
    let mut worker = Worker {
        slots: Slab::with_capacity(plan.connections as usize),
        plan,
        control,
        progress,
        ring,
        bell,
        limits,
        connect_deadlines: VecDeque::new(),
        close_deadlines: VecDeque::new(),
        buf: vec![0; READ_BUFFER_BYTES],
        scratch: Vec::with_capacity(1024),
        inflater: None,
        inflated: Vec::new(),
        tls_out: Vec::new(),
        plain: Vec::new(),
        completions: Vec::with_capacity(COMPLETION_BATCH),
        again: Vec::new(),
        pattern,
        report: WorkerReport::new(),
        started: 0,
        pending: 0,
        open: 0,
        in_flight: 0,
        echo_started: false,
        publishers: Vec::new(),
        fan_events: Vec::new(),
        closing: false,
        ramp_start: now,
        now,
        now_ns: 0,
        measure_from_ns: u64::MAX,
        measure_until_ns: u64::MAX,
    };
    ready();
    worker.ramp_start = Instant::now();
    worker.run_loop();
    worker.publish();
    worker.progress.done.store(true, Ordering::Release);
    Ok(worker.report)
}

impl Worker {
    fn run_loop(&mut self) {
        loop {
            self.set_now(Instant::now());
            if self.now >= self.plan.hard_deadline {
                self.report.hard_deadline_hit = true;
                self.abort_all("hard_deadline");
                break;
            }
            let phase = self.control.phase.load(Ordering::Acquire);
            self.measure_from_ns = self.control.measure_from_ns.load(Ordering::Acquire);
            self.measure_until_ns = self.control.measure_until_ns.load(Ordering::Acquire);
            match phase {
                PHASE_RAMP => self.start_due_connects(),
                PHASE_RUN => {
                    self.start_echo();
                    self.publish_due();
                }
                _ => self.start_closing(),
            }
            self.expire_deadlines();
            self.publish();
            if let Err(e) = self.ring.submit() {
                tracing::error!(worker = self.plan.index, error = %e, "io_uring submit failed");
                self.abort_all("io_uring_error");
                break;
            }
            if self.closing && self.slots.is_empty() {
                break;
            }
            let wait = if self.again.is_empty() {
                self.wait_time(phase)
            } else {
                Duration::ZERO
            };
            self.wait(wait);
            self.set_now(Instant::now());
            for entry in std::mem::take(&mut self.again) {
                if self.slots.contains(entry) {
                    self.on_readable(entry, true);
                }
            }
            self.handle_completions();
        }
    }

    fn set_now(&mut self, now: Instant) {
        self.now = now;
        self.now_ns = mono_ns();
    }

    /// How long to sleep: until the next connect is due while ramping, else a tick.
    fn wait_time(&self, phase: u8) -> Duration {
        let mut wait = TICK;
        if phase == PHASE_RAMP && self.started < self.plan.connections && self.pending < MAX_PENDING_HANDSHAKES {
            let due = Duration::from_secs_f64(self.started as f64 / self.plan.rate);
            let elapsed = self.now.saturating_duration_since(self.ramp_start);
            wait = wait.min(due.saturating_sub(elapsed));
        }
        if phase == PHASE_RUN
            && let Some(due) = self.next_publish_in()
        {
            wait = wait.min(due);
        }
        if self.in_flight > 0 && self.now_ns >= self.measure_until_ns {
            // Draining the last echoes: nothing to wait for but them.
            wait = wait.min(Duration::from_millis(5));
        }
        wait.min(self.plan.hard_deadline.saturating_duration_since(self.now))
    }

    /// Sleeps on the doorbell for at most `timeout`; re-arms it if it rang.
    fn wait(&mut self, timeout: Duration) {
        if !timeout.is_zero() {
            let mut pollfd = libc::pollfd {
                fd: self.bell.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ts = libc::timespec {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
            };
            // SAFETY: `pollfd` and `ts` are live locals for the duration of the call;
            // one descriptor is passed and no signal mask.
            unsafe {
                libc::ppoll(&raw mut pollfd, 1, &raw const ts, std::ptr::null());
            }
        }
        let mut bytes = [0u8; 64];
        while let Ok(n) = (&self.bell).read(&mut bytes) {
            if n == 0 {
                break;
            }
            // Re-arms the read-then-write pair if it fired (before draining, so a
            // completion posted after the drain rings it anew).
            self.ring.on_bell_bytes(&bytes[..n]);
        }
    }

    fn handle_completions(&mut self) {
        loop {
            self.completions.clear();
            self.ring.drain(&mut self.completions, COMPLETION_BATCH);
            if self.completions.is_empty() {
                return;
            }
            for i in 0..self.completions.len() {
                let completion = self.completions[i];
                self.on_completion(completion);
            }
        }
    }

    fn publish(&self) {
        let p = &self.progress;
        p.started.store(self.report.started, Ordering::Relaxed);
        p.established.store(self.report.established, Ordering::Relaxed);
        p.failed.store(self.report.failures.values().sum(), Ordering::Relaxed);
        p.open.store(self.open, Ordering::Relaxed);
        p.echoes.store(self.report.echo.received, Ordering::Relaxed);
        p.in_flight.store(self.in_flight, Ordering::Relaxed);
        let f = &self.report.fanout;
        p.welcomed.store(f.welcomed, Ordering::Relaxed);
        p.joined.store(f.joined, Ordering::Relaxed);
        p.deliveries.store(f.deliveries_total, Ordering::Relaxed);
        p.published.store(f.published_total, Ordering::Relaxed);
        p.acked.store(f.acked_total, Ordering::Relaxed);
    }

    // -----------------------------------------------------------------------------
    // Connecting
    // -----------------------------------------------------------------------------

    /// Starts the connects the schedule says are due by now.
    fn start_due_connects(&mut self) {
        let elapsed = self.now.saturating_duration_since(self.ramp_start).as_secs_f64();
        let due = ((elapsed * self.plan.rate) as u64 + 1).min(self.plan.connections);
        let mut budget = MAX_STARTS_PER_TURN;
        while self.started < due && budget > 0 && self.pending < MAX_PENDING_HANDSHAKES {
            budget -= 1;
            let id = self.plan.index as u64 + self.started * self.plan.workers as u64;
            self.started += 1;
            self.report.started += 1;
            self.start_connect(id);
        }
    }

    /// Connection `id`'s gateway.
    fn target(&self, id: u64) -> &Target {
        &self.plan.targets[self.plan.assign.target(id, self.plan.targets.len())]
    }

    fn start_connect(&mut self, id: u64) {
        let source = self.plan.sources.as_ref().map(|s| s.for_connection(id));
        let sock = match open_socket(self.target(id).addr, source) {
            Ok(sock) => sock,
            Err(failure) => {
                bump(&mut self.report.failures, failure);
                return;
            }
        };
        let fd = sock.as_raw_fd();
        let now_ns = self.now_ns;
        let entry = self.slots.insert(Slot {
            ws: Connection::new_client(self.now, 1),
            busy: None,
            tls: None,
            sock: Some(sock),
            started_ns: now_ns,
            id,
            generation: 0,
            state: State::Connecting,
            write_armed: true,
            we_closed: false,
        });
        self.pending += 1;
        self.ring.poll_write_once(fd, user_data(KIND_WRITE, entry));
        let deadline = now_ns + self.plan.connect_timeout.as_nanos() as u64;
        self.connect_deadlines.push_back((deadline, entry));
    }

    /// The socket became writable while connecting: connected, or failed.
    fn on_connected(&mut self, entry: Key) {
        let sock = self.slots[entry].sock.as_ref().expect("a connecting slot has a socket");
        match sock.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                self.fail(entry, connect_failure(&e));
                return;
            }
        }
        let fd = sock.as_raw_fd();
        self.slots[entry].state = State::Handshake;
        self.ring.poll_read_multi(fd, user_data(KIND_READ, entry));
        let id = self.slots[entry].id;
        let targets = self.plan.targets.clone();
        let target = &targets[self.plan.assign.target(id, targets.len())];
        if let (Some(config), Some(name)) = (&self.plan.tls, &target.server_name) {
            match rustls::ClientConnection::new(config.clone(), name.clone()) {
                // The upgrade request below waits in rustls until the handshake is done.
                Ok(mut conn) => {
                    // Everything written is moved to the socket path at once (whose own
                    // backlog is capped), so rustls' buffer needs no cap of its own.
                    conn.set_buffer_limit(None);
                    self.slots[entry].tls = Some(Box::new(conn));
                }
                Err(_) => {
                    self.fail(entry, "tls_setup");
                    return;
                }
            }
        }
        let mut request = std::mem::take(&mut self.scratch);
        request.clear();
        match self.plan.fanout.as_ref().and_then(|f| f.user_prefix.as_deref()) {
            Some(prefix) => fan::request_with_user(
                &mut request,
                &target.request_prefix,
                prefix,
                match &self.plan.fanout {
                    Some(f) if f.direct => "u-",
                    Some(f) if self.slots[entry].id < f.publishers => "pub-",
                    _ => "sub-",
                },
                self.slots[entry].id,
            ),
            None => match &self.plan.identities {
                Some(identities) => identities.request(&mut request, &target.request_prefix, self.slots[entry].id),
                None => request.extend_from_slice(target.request_prefix.as_bytes()),
            },
        }
        request.extend_from_slice(&handshake_key(self.plan.seed, self.slots[entry].id));
        request.extend_from_slice(b"\r\n\r\n");
        self.send(entry, &request);
        self.scratch = request;
    }

    /// An attempt failed before the upgrade.
    fn fail(&mut self, entry: Key, reason: impl Into<String>) {
        bump(&mut self.report.failures, reason);
        self.release(entry);
    }

    // -----------------------------------------------------------------------------
    // Completions, reads and the handshake response
    // -----------------------------------------------------------------------------

    fn on_completion(&mut self, completion: Completion) {
        if completion.user_data == BELL_DATA {
            return;
        }
        let entry = Key::from_user_data(completion.user_data);
        if !self.slots.contains(entry) {
            return;
        }
        match completion.user_data & KIND_MASK {
            KIND_WRITE => {
                self.slots[entry].write_armed = false;
                if self.slots[entry].state == State::Connecting {
                    self.on_connected(entry);
                } else {
                    self.flush(entry);
                }
            }
            KIND_READ => {
                if completion.result < 0 && completion.result != -libc::ECANCELED {
                    let e = io::Error::from_raw_os_error(-completion.result);
                    self.on_socket_error(entry, &e);
                    return;
                }
                if !completion.more {
                    // The kernel ended the multishot poll: arm it again.
                    let fd = self.fd(entry);
                    self.ring.poll_read_multi(fd, user_data(KIND_READ, entry));
                }
                // The peer's FIN may have come with the last data in one wake-up:
                // then read to the end, or the EOF would never be seen.
                let hangup = (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) as i32;
                self.on_readable(entry, completion.result & hangup != 0);
            }
            _ => {}
        }
    }

    fn fd(&self, entry: Key) -> RawFd {
        self.slots[entry].sock.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// Reads what the socket has. A read shorter than the buffer means it is empty,
    /// unless the peer hung up (`hangup`) or we wait for its EOF (closing): then read
    /// on until the EOF or EAGAIN.
    fn on_readable(&mut self, entry: Key, hangup: bool) {
        let mut budget = READ_BUDGET_BYTES;
        loop {
            let sock = self.slots[entry].sock.as_ref().expect("a live slot has a socket");
            let n = match (&*sock).read(&mut self.buf) {
                Ok(0) => {
                    self.on_eof(entry);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.on_socket_error(entry, &e);
                    return;
                }
            };
            if self.plan.echo.is_some() || self.plan.fanout.is_some() {
                // Echo and delivery latency: stamp each read, not the turn.
                self.set_now(Instant::now());
            }
            if self.slots[entry].tls.is_some() {
                let Some(plain) = self.decrypt(entry, n) else { return };
                if plain > 0 {
                    std::mem::swap(&mut self.buf, &mut self.plain);
                    self.on_plaintext(entry, plain);
                    std::mem::swap(&mut self.buf, &mut self.plain);
                }
            } else {
                self.on_plaintext(entry, n);
            }
            if !self.slots.contains(entry) {
                return;
            }
            let to_the_end = hangup || self.slots[entry].state == State::Closing;
            if n < self.buf.len() && !to_the_end {
                return;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                // The multishot poll only reports new arrivals: come back next turn.
                self.again.push(entry);
                return;
            }
        }
    }

    /// Plaintext arrived in `buf[..n]`.
    fn on_plaintext(&mut self, entry: Key, n: usize) {
        match self.slots[entry].state {
            State::Handshake => self.on_response_bytes(entry, n),
            State::Open | State::Closing => self.on_frame_bytes(entry, n),
            State::Connecting => unreachable!("no read poll before the connect completes"),
        }
    }

    /// wss://: feeds `buf[..n]` to rustls, sends what it answers (handshake flights),
    /// and leaves the plaintext in `plain`; returns its length, or `None` when the
    /// connection failed (counted and released).
    fn decrypt(&mut self, entry: Key, n: usize) -> Option<usize> {
        let conn = self.slots[entry].tls.as_deref_mut().expect("a TLS slot");
        self.plain.clear();
        let mut ciphertext = &self.buf[..n];
        let mut failed = None;
        while !ciphertext.is_empty() {
            if let Err(e) = conn.read_tls(&mut ciphertext) {
                failed = Some(format!("tls_read_{:?}", e.kind()));
                break;
            }
            if let Err(e) = conn.process_new_packets() {
                failed = Some(tls_failure(&e));
                break;
            }
            // WouldBlock: no more plaintext now; Ok(0): the server's close_notify.
            let _ = std::io::Read::read_to_end(&mut conn.reader(), &mut self.plain);
        }
        if let Some(label) = failed {
            // rustls may have an alert to send: give it its chance, then give up.
            self.send(entry, &[]);
            if self.slots.contains(entry) {
                self.on_broken(entry, &label);
            }
            return None;
        }
        self.send(entry, &[]);
        self.slots.contains(entry).then_some(self.plain.len())
    }

    /// Response bytes arrived in `buf[..n]`.
    fn on_response_bytes(&mut self, entry: Key, n: usize) {
        let stashed = self.slots[entry].busy.as_deref().is_some_and(|b| !b.head.is_empty());
        if stashed {
            let busy = self.slots[entry].busy.as_deref_mut().expect("checked above");
            let room = (MAX_RESPONSE_HEAD_BYTES + 1).saturating_sub(busy.head.len());
            busy.head.extend_from_slice(&self.buf[..n.min(room)]);
        }
        let data: &[u8] = if stashed {
            &self.slots[entry].busy.as_deref().expect("checked above").head
        } else {
            &self.buf[..n]
        };
        let key = handshake_key(self.plan.seed, self.slots[entry].id);
        let verdict = check_response(data, &key, self.plan.compression);
        match verdict {
            Response::Partial if data.len() > MAX_RESPONSE_HEAD_BYTES => self.fail(entry, "bad_response"),
            Response::Partial => {
                if !stashed {
                    let busy = self.slots[entry].busy.get_or_insert_with(Box::default);
                    busy.head.extend_from_slice(&self.buf[..n]);
                }
            }
            Response::Refused(reason) => self.fail(entry, reason),
            Response::Upgraded { head_len, deflate } => {
                let leftover = data[head_len..].to_vec();
                self.on_upgraded(entry, deflate);
                if !leftover.is_empty() && self.slots.contains(entry) {
                    // Frames right behind the 101: feed them as if just read.
                    self.buf[..leftover.len()].copy_from_slice(&leftover);
                    self.on_frame_bytes(entry, leftover.len());
                }
            }
        }
    }

    fn on_upgraded(&mut self, entry: Key, deflate: bool) {
        let (now, now_ns, seed) = (self.now, self.now_ns, self.plan.seed);
        let slot = &mut self.slots[entry];
        slot.state = State::Open;
        slot.ws = Connection::new_client(now, (seed ^ slot.id.wrapping_mul(0x9e37_79b9)) as u32);
        if deflate {
            // The server's messages may now carry RSV1; ours stay uncompressed.
            slot.ws.set_deflate(15);
            self.report.compression_agreed += 1;
        }
        if let Some(busy) = slot.busy.as_deref_mut() {
            busy.head = Vec::new();
        }
        if self.plan.echo.is_some() {
            let in_flight = self.plan.echo.map_or(0, |e| e.in_flight);
            let busy = slot.busy.get_or_insert_with(Box::default);
            busy.echo = Some(EchoConn {
                sent_ns: VecDeque::with_capacity(in_flight),
                next_send: 0,
                next_recv: 0,
            });
        } else if self.plan.fanout.is_some() {
            let busy = slot.busy.get_or_insert_with(Box::default);
            busy.fan = Some(fan::FanConn::default());
        } else if slot.busy.as_deref().is_some_and(Busy::is_empty) {
            slot.busy = None;
        }
        let latency = now_ns.saturating_sub(slot.started_ns).max(1);
        self.report.handshake_ns.saturating_record(latency);
        self.report.established += 1;
        self.report.last_established_ns = Some(now_ns);
        self.pending -= 1;
        self.open += 1;
        if self.echo_started {
            // Upgraded after traffic started (a slow handshake): join in.
            self.send_echoes(entry, self.plan.echo.map_or(0, |e| e.in_flight));
        }
    }

    // -----------------------------------------------------------------------------
    // Frames
    // -----------------------------------------------------------------------------

    /// Frame bytes arrived in `buf[..n]` for an open or closing connection.
    fn on_frame_bytes(&mut self, entry: Key, n: usize) {
        let now = self.now;
        let now_ns = self.now_ns;
        let mut off = 0;
        let mut replies = 0usize;
        let sending = self.now_ns < self.measure_until_ns && !self.closing;
        while off < n {
            let Slot {
                ws, busy, id, state, ..
            } = &mut self.slots[entry];
            let (used, event) = ws.handle_input(now, &self.limits, &mut self.buf[off..n]);
            let Some(event) = event else { break };
            off += used;
            // A compressed message (only where the 101 agreed) is inflated into the
            // worker's buffer and goes on like any other; one that does not inflate
            // fails the connection with the error's code.
            let event = match event {
                Event::Compressed { text, payload } => {
                    let inflater = self.inflater.get_or_insert_with(Inflater::default);
                    match inflater.inflate(&payload, text, self.limits.max_message_bytes, &mut self.inflated) {
                        Ok(()) => {
                            self.report.compressed_messages += 1;
                            Event::Message(crate::proto::deflate::inflated_message(&self.inflated, text))
                        }
                        Err(error) => {
                            ws.fail_message(now, &self.limits, error);
                            Event::Error(error)
                        }
                    }
                }
                event => event,
            };
            match event {
                Event::Message(message) if self.plan.fanout.is_some() => {
                    let direct = self.plan.fanout.as_ref().is_some_and(|f| f.direct);
                    fan::classify(&message, direct, &mut self.fan_events, &mut self.report.fanout);
                }
                Event::Message(message) => match (self.plan.echo, busy.as_deref_mut().and_then(|b| b.echo.as_mut())) {
                    (Some(plan), Some(echo)) => {
                        let text = matches!(message, Message::Text(_));
                        let sent_ns = echo.sent_ns.pop_front();
                        let seq = echo.next_recv;
                        echo.next_recv += 1;
                        let stats = &mut self.report.echo;
                        stats.received += 1;
                        let expected = payload(&self.pattern, plan.size, *id, seq);
                        if sent_ns.is_none() || text != plan.text || message.as_bytes() != expected {
                            stats.mismatches += 1;
                        }
                        if let Some(sent_ns) = sent_ns {
                            self.in_flight -= 1;
                            if sent_ns >= self.measure_from_ns && now_ns < self.measure_until_ns {
                                stats.measured += 1;
                                stats.rtt_ns.saturating_record(now_ns.saturating_sub(sent_ns).max(1));
                            }
                        }
                        if sending && *state == State::Open {
                            replies += 1;
                        }
                    }
                    _ => self.report.unexpected_messages += 1,
                },
                Event::Compressed { .. } => unreachable!("inflated above"),
                Event::Close { code, .. } => {
                    if *state == State::Open {
                        // The server closed first (drain, heartbeat, policy).
                        let code = code.map_or(CloseCode::NO_STATUS.0, |c| c.0);
                        bump(&mut self.report.dropped, format!("server_close_{code}"));
                    }
                }
                Event::Error(error) => bump(&mut self.report.protocol_errors, error.label()),
            }
        }
        if replies > 0 {
            self.send_echoes(entry, replies);
        }
        if !self.fan_events.is_empty() {
            self.on_fan_events(entry);
        }
        if self.slots.contains(entry) {
            self.after_protocol(entry);
        }
    }

    /// Sends what the protocol core wants sent (pong, close) and moves a connection
    /// whose WebSocket is finishing towards its end.
    fn after_protocol(&mut self, entry: Key) {
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        while let Some(control) = self.slots[entry].ws.poll_transmit() {
            out.extend_from_slice(control.as_bytes());
        }
        if !out.is_empty() {
            self.send(entry, &out);
        }
        self.scratch = out;
        if !self.slots.contains(entry) {
            return;
        }
        let slot = &self.slots[entry];
        let finishing = !slot.ws.can_send() || slot.ws.is_closed();
        if slot.state == State::Open && finishing {
            // The server closed first (or broke the protocol): our answer is out; wait
            // for its end of the stream.
            self.leave_open(entry);
            self.slots[entry].state = State::Closing;
            let deadline = self.now_ns + self.plan.close_timeout.as_nanos() as u64;
            self.close_deadlines.push_back((deadline, entry));
        }
    }

    fn leave_open(&mut self, entry: Key) {
        if self.slots[entry].state == State::Open {
            self.open -= 1;
            if let Some(echo) = self.slots[entry].busy.as_deref_mut().and_then(|b| b.echo.take()) {
                let left = echo.sent_ns.len() as u64;
                self.in_flight -= left;
                self.report.echo.unanswered += left;
            }
            if self.plan.fanout.is_some() {
                self.leave_open_fan(entry);
            }
        }
    }

    // -----------------------------------------------------------------------------
    // Echo traffic
    // -----------------------------------------------------------------------------

    /// Starts echo traffic once the warm-up begins: `in_flight` messages on every open
    /// connection.
    fn start_echo(&mut self) {
        let Some(plan) = self.plan.echo else { return };
        if self.echo_started || self.now_ns < self.control.send_from_ns.load(Ordering::Acquire) {
            return;
        }
        self.echo_started = true;
        let open: Vec<Key> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.state == State::Open)
            .map(|(entry, _)| entry)
            .collect();
        for entry in open {
            self.send_echoes(entry, plan.in_flight);
        }
    }

    /// Sends `count` messages on one connection, in one write.
    fn send_echoes(&mut self, entry: Key, count: usize) {
        let Some(plan) = self.plan.echo else { return };
        if count == 0 || self.now_ns >= self.measure_until_ns || self.closing {
            return;
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let send_ns = mono_ns();
        let Slot { ws, busy, id, .. } = &mut self.slots[entry];
        let Some(echo) = busy.as_deref_mut().and_then(|b| b.echo.as_mut()) else {
            self.scratch = out;
            return;
        };
        let mut sent = 0;
        for _ in 0..count {
            if echo.sent_ns.len() >= plan.in_flight {
                break;
            }
            let body = payload(&self.pattern, plan.size, *id, echo.next_send);
            if ws.write_message(&mut out, plan.text, body).is_err() {
                break;
            }
            echo.next_send += 1;
            echo.sent_ns.push_back(send_ns);
            sent += 1;
        }
        self.in_flight += sent;
        self.report.echo.sent += sent;
        if !out.is_empty() {
            self.send(entry, &out);
        }
        self.scratch = out;
    }

    // -----------------------------------------------------------------------------
    // Writing
    // -----------------------------------------------------------------------------

    /// Sends `bytes` of WebSocket (or HTTP) data: as they are, or through the
    /// connection's TLS session (with whatever handshake records it has to send).
    fn send(&mut self, entry: Key, bytes: &[u8]) {
        let Some(conn) = self.slots[entry].tls.as_deref_mut() else {
            self.send_raw(entry, bytes);
            return;
        };
        if !bytes.is_empty() && std::io::Write::write_all(&mut conn.writer(), bytes).is_err() {
            self.on_broken(entry, "tls_write");
            return;
        }
        let mut out = std::mem::take(&mut self.tls_out);
        out.clear();
        while conn.wants_write() {
            if conn.write_tls(&mut out).is_err() {
                break;
            }
        }
        if !out.is_empty() {
            self.send_raw(entry, &out);
        }
        self.tls_out = out;
    }

    /// Writes `bytes` now, or queues what the socket does not take and waits for it to
    /// be writable. Order is kept: nothing bypasses queued bytes.
    fn send_raw(&mut self, entry: Key, bytes: &[u8]) {
        let queued = self.slots[entry].busy.as_deref().is_some_and(|b| !b.out.is_empty());
        let written = if queued {
            0
        } else {
            let sock = self.slots[entry].sock.as_ref().expect("a live slot has a socket");
            match send_all(sock, bytes) {
                Ok(n) => n,
                Err(e) => {
                    self.on_socket_error(entry, &e);
                    return;
                }
            }
        };
        if written == bytes.len() {
            return;
        }
        let busy = self.slots[entry].busy.get_or_insert_with(Box::default);
        if busy.out.len() + bytes.len() - written > MAX_PENDING_OUT_BYTES {
            self.on_broken(entry, "send_backlog");
            return;
        }
        busy.out.extend_from_slice(&bytes[written..]);
        self.arm_write(entry);
    }

    fn arm_write(&mut self, entry: Key) {
        let fd = self.fd(entry);
        let slot = &mut self.slots[entry];
        if !slot.write_armed {
            slot.write_armed = true;
            self.ring.poll_write_once(fd, user_data(KIND_WRITE, entry));
        }
    }

    /// The socket is writable again: write what was queued.
    fn flush(&mut self, entry: Key) {
        let Some(busy) = self.slots[entry].busy.as_deref_mut() else {
            return;
        };
        if busy.out.is_empty() {
            return;
        }
        let out = std::mem::take(&mut busy.out);
        let sock = self.slots[entry].sock.as_ref().expect("a live slot has a socket");
        match send_all(sock, &out) {
            Ok(n) => {
                let busy = self.slots[entry].busy.as_deref_mut().expect("checked above");
                busy.out = out;
                busy.out.drain(..n);
                if busy.out.is_empty() {
                    busy.out = Vec::new();
                    if busy.is_empty() {
                        self.slots[entry].busy = None;
                    }
                } else {
                    self.arm_write(entry);
                }
            }
            Err(e) => self.on_socket_error(entry, &e),
        }
    }

    // -----------------------------------------------------------------------------
    // Endings
    // -----------------------------------------------------------------------------

    fn on_eof(&mut self, entry: Key) {
        let slot = &self.slots[entry];
        match slot.state {
            State::Handshake => self.fail(entry, "closed_before_response"),
            State::Open => {
                bump(&mut self.report.dropped, "eof");
                self.release(entry);
            }
            State::Closing => {
                if slot.we_closed {
                    if slot.ws.is_closed() {
                        self.report.closed_clean += 1;
                    } else {
                        bump(&mut self.report.close_failures, "eof_before_close_frame");
                    }
                }
                self.release(entry);
            }
            State::Connecting => unreachable!("no read poll before the connect completes"),
        }
    }

    /// A read, write or poll failed with `e`.
    fn on_socket_error(&mut self, entry: Key, e: &io::Error) {
        let label = match e.raw_os_error() {
            Some(libc::ECONNRESET | libc::EPIPE) => "reset".to_owned(),
            Some(libc::ETIMEDOUT) => "tcp_timeout".to_owned(),
            Some(errno) => format!("errno_{errno}"),
            None => "io_error".to_owned(),
        };
        self.on_broken(entry, &label);
    }

    /// The connection broke for `label`: counted by what it was doing.
    fn on_broken(&mut self, entry: Key, label: &str) {
        let slot = &self.slots[entry];
        match slot.state {
            State::Connecting | State::Handshake => bump(&mut self.report.failures, label),
            State::Open => bump(&mut self.report.dropped, label),
            State::Closing if slot.we_closed => bump(&mut self.report.close_failures, label),
            State::Closing => {}
        }
        self.release(entry);
    }

    /// The close phase: close every open connection with 1000; give up on attempts
    /// still in progress.
    fn start_closing(&mut self) {
        if self.closing {
            return;
        }
        self.closing = true;
        let entries: Vec<Key> = self.slots.keys().collect();
        for entry in entries {
            let Some(slot) = self.slots.get(entry) else { continue };
            match slot.state {
                State::Open => self.close(entry),
                State::Connecting | State::Handshake => {
                    self.report.aborted += 1;
                    self.release(entry);
                }
                State::Closing => {}
            }
        }
        // Connections never started count as aborted too.
        self.report.aborted += self.plan.connections - self.started;
        self.started = self.plan.connections;
    }

    /// Sends close 1000 on an open connection and waits for the server's answer.
    fn close(&mut self, entry: Key) {
        let (now, now_ns) = (self.now, self.now_ns);
        self.slots[entry]
            .ws
            .close(now, &self.limits, CloseCode::NORMAL, "bench done");
        self.leave_open(entry);
        let slot = &mut self.slots[entry];
        slot.state = State::Closing;
        slot.we_closed = true;
        let deadline = now_ns + self.plan.close_timeout.as_nanos() as u64;
        self.close_deadlines.push_back((deadline, entry));
        self.after_protocol(entry);
    }

    /// Fails attempts past their connect deadline and ends closes past theirs.
    fn expire_deadlines(&mut self) {
        while let Some(&(at, entry)) = self.connect_deadlines.front() {
            if at > self.now_ns {
                break;
            }
            self.connect_deadlines.pop_front();
            if !self.slots.contains(entry) {
                continue;
            }
            match self.slots[entry].state {
                State::Connecting => self.fail(entry, "connect_timeout"),
                State::Handshake => self.fail(entry, "handshake_timeout"),
                _ => {}
            }
        }
        while let Some(&(at, entry)) = self.close_deadlines.front() {
            if at > self.now_ns {
                break;
            }
            self.close_deadlines.pop_front();
            if !self.slots.contains(entry) || self.slots[entry].state != State::Closing {
                continue;
            }
            let slot = &self.slots[entry];
            if slot.we_closed {
                let label = if slot.ws.is_closed() {
                    "server_kept_tcp_open"
                } else {
                    "close_timeout"
                };
                bump(&mut self.report.close_failures, label);
            }
            self.release(entry);
        }
    }

    /// The hard deadline: drop everything, counting what was cut short.
    fn abort_all(&mut self, label: &str) {
        let entries: Vec<Key> = self.slots.keys().collect();
        for entry in entries {
            let slot = &self.slots[entry];
            match slot.state {
                State::Connecting | State::Handshake => self.report.aborted += 1,
                State::Open => bump(&mut self.report.dropped, label),
                State::Closing if slot.we_closed => bump(&mut self.report.close_failures, label),
                State::Closing => {}
            }
            self.release(entry);
        }
        self.report.aborted += self.plan.connections - self.started;
        self.started = self.plan.connections;
        let _ = self.ring.submit();
    }

    /// Frees the slot: stops its polls, closes the socket.
    fn release(&mut self, entry: Key) {
        let Some(slot) = self.slots.get(entry) else { return };
        match slot.state {
            State::Connecting | State::Handshake => self.pending -= 1,
            State::Open => self.leave_open(entry),
            State::Closing => {}
        }
        // The slab bumps the slot's generation, so late completions are recognised.
        let slot = self.slots.remove(entry).expect("checked above");
        // A pending poll holds a reference to the file and would keep the socket open.
        if slot.state != State::Connecting {
            self.ring.poll_remove(user_data(KIND_READ, entry));
        }
        if slot.write_armed {
            self.ring.poll_remove(user_data(KIND_WRITE, entry));
        }
        // Dropping the slot closes the socket.
        drop(slot);
    }
}

/// A short label for a TLS failure (`tls_alert_...`, `tls_certificate`, `tls_other`).
fn tls_failure(e: &rustls::Error) -> String {
    match e {
        rustls::Error::AlertReceived(alert) => format!("tls_alert_{alert:?}").to_ascii_lowercase(),
        rustls::Error::InvalidCertificate(_) => "tls_certificate".to_owned(),
        rustls::Error::NoApplicationProtocol => "tls_no_alpn".to_owned(),
        rustls::Error::PeerIncompatible(_) => "tls_incompatible".to_owned(),
        _ => "tls_other".to_owned(),
    }
}

/// Opens a non-blocking TCP socket, binds it to `source` (port chosen at connect time)
/// and starts connecting. Returns the failure label if any step fails.
fn open_socket(target: SocketAddr, source: Option<IpAddr>) -> Result<Socket, String> {
    let ty = Type::STREAM.nonblocking().cloexec();
    let sock =
        Socket::new(Domain::for_address(target), ty, Some(Protocol::TCP)).map_err(|e| match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => "out_of_files".to_owned(),
            _ => format!("socket_errno_{}", e.raw_os_error().unwrap_or(0)),
        })?;
    let _ = sock.set_nodelay(true);
    if let Some(ip) = source {
        set_bind_address_no_port(&sock);
        sock.bind(&SockAddr::from(SocketAddr::new(ip, 0)))
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EADDRNOTAVAIL) => "source_ip_not_local".to_owned(),
                Some(libc::EADDRINUSE) => "no_source_port".to_owned(),
                _ => format!("bind_errno_{}", e.raw_os_error().unwrap_or(0)),
            })?;
    }
    match sock.connect(&SockAddr::from(target)) {
        Ok(()) => Ok(sock),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(sock),
        Err(e) => Err(connect_failure(&e)),
    }
}

/// `IP_BIND_ADDRESS_NO_PORT`: defer the port choice from `bind()` to `connect()`, so a
/// source address offers its whole port range to every destination instead of sharing
/// it among all of them. Best effort: older kernels lack it, which only lowers capacity.
fn set_bind_address_no_port(sock: &Socket) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The failure label of a `connect()` error.
fn connect_failure(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connect_refused".to_owned(),
        Some(libc::ETIMEDOUT) => "connect_timeout".to_owned(),
        Some(libc::ECONNRESET) => "reset".to_owned(),
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => "unreachable".to_owned(),
        // No free port for this source address and destination.
        Some(libc::EADDRNOTAVAIL | libc::EAGAIN) => "no_source_port".to_owned(),
        Some(errno) => format!("connect_errno_{errno}"),
        None => "connect_error".to_owned(),
    }
}

/// Writes as much of `bytes` as the socket takes now; `Ok(n)` with `n` possibly short.
fn send_all(sock: &Socket, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match sock.send_with_flags(&bytes[written..], libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// The `Sec-WebSocket-Key` of connection `id`: 16 bytes from the run's seed and the
/// connection number, base64. Derived, not stored, so a connection carries no key.
pub fn handshake_key(seed: u64, id: u64) -> [u8; 24] {
    let a = splitmix64(seed ^ id.wrapping_mul(0xa076_1d64_78bd_642f));
    let b = splitmix64(a ^ 0xe703_7ed1_a0b4_28db);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&a.to_le_bytes());
    raw[8..].copy_from_slice(&b.to_le_bytes());
    let mut key = [0u8; 24];
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(raw, &mut key)
        .expect("16 bytes are 24 base64 characters");
    debug_assert_eq!(n, 24);
    key
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The payload of message `seq` on connection `id`.
fn payload(pattern: &[u8], size: usize, id: u64, seq: u64) -> &[u8] {
    let offset = (id.wrapping_mul(7).wrapping_add(seq.wrapping_mul(13)) % PATTERN_PERIOD as u64) as usize;
    &pattern[offset..offset + size]
}

/// What a response head says.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// Not all there yet.
    Partial,
    /// Not an upgrade: the failure label (`status_503`, `bad_accept_key`, ...).
    Refused(String),
    /// 101 with the right accept key; the head is `head_len` bytes.
    Upgraded {
        /// Bytes of the response head; frames may follow.
        head_len: usize,
        /// The server agreed to permessage-deflate (only when we offered it).
        deflate: bool,
    },
}

/// Checks a response head against the key we sent (RFC 6455 section 4.1: status 101,
/// `Upgrade: websocket`, `Connection: upgrade`, the accept key) and, when we `offered`
/// permessage-deflate, whether `Sec-WebSocket-Extensions` agrees to it. An agreement we
/// did not ask for is refused (`unrequested_extension`, RFC 6455 section 9.1), and so is
/// one without `server_no_context_takeover` (`deflate_context_takeover`): the worker's one
/// inflater keeps no window per connection.
pub fn check_response(data: &[u8], key: &[u8], offered: bool) -> Response {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(data) {
        Ok(httparse::Status::Partial) => return Response::Partial,
        Ok(httparse::Status::Complete(len)) => len,
        Err(_) => return Response::Refused("bad_response".to_owned()),
    };
    let code = response.code.unwrap_or(0);
    if code != 101 {
        return Response::Refused(format!("status_{code}"));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.trim_ascii())
    };
    let upgrade_ok = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"));
    let connection_ok = header("connection").is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    if !upgrade_ok || !connection_ok {
        return Response::Refused("bad_upgrade_headers".to_owned());
    }
    if header("sec-websocket-accept") != Some(&accept_key(key)[..]) {
        return Response::Refused("bad_accept_key".to_owned());
    }
    // Each extension in the answer, read with the server's own list grammar.
    let mut deflate = None;
    for h in response.headers.iter() {
        if !h.name.eq_ignore_ascii_case("sec-websocket-extensions") {
            continue;
        }
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Response::Refused("bad_response".to_owned());
        };
        for extension in ExtensionList::new(value.trim()) {
            let Ok(extension) = extension else {
                return Response::Refused("bad_response".to_owned());
            };
            if !offered || !extension.name.eq_ignore_ascii_case(EXTENSION) || deflate.is_some() {
                return Response::Refused("unrequested_extension".to_owned());
            }
            deflate = Some(
                extension
                    .params()
                    .any(|(name, _)| name.eq_ignore_ascii_case("server_no_context_takeover")),
            );
        }
    }
    if deflate == Some(false) {
        return Response::Refused("deflate_context_takeover".to_owned());
    }
    Response::Upgraded {
        head_len,
        deflate: deflate.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_slot_is_small() {
        let size = Slab::<Slot>::SLOT_BYTES;
        assert_eq!(size, size_of::<Slot>(), "the slab adds nothing to a slot");
        assert!(size <= 128, "{size} bytes");
        assert_eq!(size_of::<Option<Socket>>(), 4);
    }

    #[test]
    fn keys_are_valid_base64_and_differ() {
        let a = handshake_key(1, 0);
        let b = handshake_key(1, 1);
        let c = handshake_key(2, 0);
        assert_ne!(a, b);
        assert_ne!(a, c);
        let raw = base64::engine::general_purpose::STANDARD.decode(a).unwrap();
        assert_eq!(raw.len(), 16);
    }

    #[test]
    fn responses_are_checked() {
        let key = handshake_key(7, 7);
        let accept = String::from_utf8(accept_key(&key).to_vec()).unwrap();
        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        let head_len = good.len();
        let mut with_frame = good.clone().into_bytes();
        with_frame.extend_from_slice(b"\x81\x02hi");
        assert_eq!(
            check_response(&with_frame, &key, false),
            Response::Upgraded {
                head_len,
                deflate: false
            }
        );
        // Offered but not agreed: plain.
        assert_eq!(
            check_response(&with_frame, &key, true),
            Response::Upgraded {
                head_len,
                deflate: false
            }
        );
        let agreed = good.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n",
        );
        assert_eq!(
            check_response(agreed.as_bytes(), &key, true),
            Response::Upgraded {
                head_len: agreed.len(),
                deflate: true
            }
        );
        // Every strict prefix is partial.
        for cut in 0..good.len() {
            assert_eq!(
                check_response(&good.as_bytes()[..cut], &key, false),
                Response::Partial,
                "cut {cut}"
            );
        }
        let refused = |text: &str| match check_response(text.as_bytes(), &key, true) {
            Response::Refused(label) => label,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"),
            "status_503"
        );
        assert_eq!(refused(&good.replace(&accept, "AAAA")), "bad_accept_key");
        assert_eq!(
            refused(&good.replace("Upgrade: websocket\r\n", "")),
            "bad_upgrade_headers"
        );
        assert_eq!(
            refused(&good.replace("Connection: Upgrade", "Connection: keep-alive")),
            "bad_upgrade_headers"
        );
        assert_eq!(refused("SSH-2.0-OpenSSH\r\n\r\n"), "bad_response");
        // Agreements we did not ask for, or cannot inflate.
        match check_response(agreed.as_bytes(), &key, false) {
            Response::Refused(label) => assert_eq!(label, "unrequested_extension"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            refused(&good.replace(
                "\r\n\r\n",
                "\r\nSec-WebSocket-Extensions: x-webkit-deflate-frame\r\n\r\n"
            )),
            "unrequested_extension"
        );
        assert_eq!(
            refused(&good.replace("\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n")),
            "deflate_context_takeover"
        );
    }

    #[test]
    fn payloads_are_printable_and_vary() {
        let size = 32;
        let pattern: Vec<u8> = (0..size + PATTERN_PERIOD)
            .map(|i| b'!' + (i % PATTERN_PERIOD) as u8)
            .collect();
        let a = payload(&pattern, size, 0, 0);
        let b = payload(&pattern, size, 0, 1);
        assert_eq!(a.len(), size);
        assert_ne!(a, b);
        assert!(a.iter().all(|c| c.is_ascii_graphic()));
        assert!(std::str::from_utf8(payload(&pattern, size, 99, 12345)).is_ok());
    }
}
