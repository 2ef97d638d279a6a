//! One pipelined Redis connection, run as a task on a shard's glommio executor.
//!
//! In: [`Batch`]es of commands handed to [`Redis::send`] by code on the same shard.
//! Out: each batch's replies, in order, through its [`Reply`] future; pushes (RESP3
//! out-of-band data) to the push handler; [`RedisStats`] counters.
//!
//! ```text
//!  Redis::send(batch) ──▶ outbox (encoded bytes, bounded) ──▶ Driver::run, the task:
//!        │ refused at once:                                   connect (timeout)
//!        │ unavailable (down), full                           HELLO 3 [AUTH] (RESP2 + AUTH if refused)
//!        ▼                                                    SELECT db
//!      Reply ◀── replies in order ◀── one write of every queued batch, then its replies
//! ```
//!
//! # Round trips
//!
//! Whatever was queued when the connection is free goes out in one write, and its
//! replies are read in order, each batch resolved as soon as its last reply is in: a
//! shard's tick that queues one batch costs one round trip. While replies are awaited,
//! new batches wait in the outbox for the next write (one round trip in flight at a
//! time: simple, and what one tick per shard needs).
//!
//! # Faults
//!
//! - Down (connecting, backing off): `send` refuses at once with
//!   [`Refused::Unavailable`]; nothing queues while Redis is away.
//! - The outbox is bounded in commands and bytes: past either, [`Refused::Full`].
//!   What is in flight is what was in the outbox, so memory is at most twice the bound.
//! - A connection lost, a reply not back within `command_timeout` (Redis paused, a
//!   partition), a reply that is not RESP or over the decoder's limits: the connection
//!   is dropped; written batches fail with [`Failed::Disconnected`] or
//!   [`Failed::Timeout`] (they may have run), queued ones with [`Failed::NotSent`] (they
//!   did not), then the task reconnects.
//! - Reconnects back off exponentially with jitter: attempt `n` waits a uniform time in
//!   `[backoff_min, min(backoff_max, backoff_min * 2^n)]`, so a fleet restarting with
//!   Redis does not come back in step; a successful handshake resets `n`.
//! - While idle the task also reads, so a Redis restart or a closed socket is noticed
//!   at once, not by the next batch.
//!
//! One file (about 790 lines, half of them docs): the handle, the task and the socket
//! hand each other the same state (outbox, pending batches, counters), and the
//! public types are what that state is made of.
//!
//! Subscriptions share the connection (RESP3 allows any command while subscribed):
//! `SUBSCRIBE` and `UNSUBSCRIBE` go in a batch with [`Batch::cmd_unanswered`], their
//! confirmations and messages arrive as pushes. `rediss://` runs TLS over the socket
//! (rustls through `futures-rustls`, which drives any futures-io stream, so it works on
//! glommio's; [`RedisTls`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncWriteExt as _};
use glommio::net::TcpStream;
use rustls_pki_types::ServerName;
use tracing::{info, warn};

use super::backoff::Backoff;
use super::resp::{self, DecodeError, Limits, Value};
use super::url::RedisUrl;
use crate::auth::Secret;

/// The read buffer a connection starts with (and shrinks back to after a large reply).
const READ_BUFFER: usize = 16 * 1024;

/// How a connection reaches Redis and what it may queue.
#[derive(Clone, Debug)]
pub struct ConnConfig {
    /// Where Redis listens; reconnects go round the list.
    pub addrs: Vec<SocketAddr>,
    /// ACL user; `None` is `default`.
    pub user: Option<String>,
    /// Password (`HELLO 3 AUTH` or `AUTH`).
    pub password: Option<Secret>,
    /// Database (`SELECT`, skipped for 0).
    pub db: u32,
    /// TCP connect bound.
    pub connect_timeout: Duration,
    /// How long a written batch (or a handshake step) may wait for its replies.
    pub command_timeout: Duration,
    /// Shortest wait before a reconnect.
    pub backoff_min: Duration,
    /// Longest wait before a reconnect.
    pub backoff_max: Duration,
    /// Most commands queued and not yet written.
    pub outbox_max_commands: usize,
    /// Most encoded bytes queued and not yet written.
    pub outbox_max_bytes: usize,
    /// What a reply may be.
    pub limits: Limits,
    /// `rediss://`: TLS over the TCP connection, the server's certificate verified.
    pub tls: Option<RedisTls>,
}

/// TLS to Redis: the client configuration (roots) and the name the certificate must
/// carry.
#[derive(Clone)]
pub struct RedisTls {
    /// rustls' client configuration.
    pub config: Arc<rustls::ClientConfig>,
    /// The URL's host.
    pub name: ServerName<'static>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisTls({:?})", self.name)
    }
}

/// Where the roots come from when no CA file is given: Debian's (and Ubuntu's) system
/// bundle.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

impl RedisTls {
    /// TLS 1.3 and 1.2 to `host`, trusting the PEM roots in `ca` (or [`SYSTEM_ROOTS`]).
    pub fn new(host: &str, ca: Option<&Path>) -> io::Result<Self> {
        let path = ca.unwrap_or(Path::new(SYSTEM_ROOTS));
        let certs = crate::tls::load_certificates(path).map_err(|e| io::Error::other(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| io::Error::other(format!("{}: not a usable root: {e}", path.display())))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| io::Error::other(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::other(format!("{host}: not a TLS server name: {e}")))?;
        Ok(Self {
            config: Arc::new(config),
            name,
        })
    }
}

impl ConnConfig {
    /// Defaults around `addrs`: connect 1 s, command 2 s, backoff 50 ms .. 5 s, outbox
    /// 65,536 commands and 16 MiB.
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        Self {
            addrs,
            user: None,
            password: None,
            db: 0,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            outbox_max_commands: 65_536,
            outbox_max_bytes: 16 << 20,
            limits: Limits::default(),
            tls: None,
        }
    }

    /// The defaults for `url`, its host resolved (blocking: call it off the shards).
    /// `rediss://` verifies the server against the PEM roots in `ca` (default: the
    /// system bundle, [`SYSTEM_ROOTS`]).
    pub fn from_url(url: &RedisUrl, ca: Option<&Path>) -> io::Result<Self> {
        let tls = if url.tls {
            Some(RedisTls::new(&url.host, ca)?)
        } else {
            None
        };
        let addrs = url.socket_addrs()?;
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the Redis host resolves to no address",
            ));
        }
        Ok(Self {
            user: url.user.clone(),
            password: url.password.clone(),
            db: url.db,
            tls,
            ..Self::new(addrs)
        })
    }
}

/// Commands to send together; their replies come back together, in order.
#[derive(Default, Debug)]
pub struct Batch {
    bytes: Vec<u8>,
    commands: usize,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one command.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> &mut Self {
        resp::encode_command(&mut self.bytes, args);
        self.commands += 1;
        self
    }

    /// Adds a command Redis answers with pushes only (RESP3 `SUBSCRIBE`,
    /// `UNSUBSCRIBE`): written with the batch, no reply awaited; its confirmations
    /// reach the push handler.
    pub fn cmd_unanswered<A: AsRef<[u8]>>(&mut self, args: &[A]) -> &mut Self {
        resp::encode_command(&mut self.bytes, args);
        self
    }

    /// Moves `other`'s commands after this batch's.
    pub fn append(&mut self, other: Batch) {
        self.bytes.extend_from_slice(&other.bytes);
        self.commands += other.commands;
    }

    /// Commands in the batch that get a reply.
    pub fn len(&self) -> usize {
        self.commands
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Encoded bytes.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// Why [`Redis::send`] refused a batch at once (counted; nothing was queued).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not connected (connecting or backing off).
    Unavailable,
    /// The outbox is at its bound.
    Full,
    /// [`Redis::close`] was called.
    Closed,
}

/// Why an accepted batch has no replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failed {
    /// Written, then the connection was lost: the commands may have run.
    Disconnected,
    /// Written, and the replies were not back within `command_timeout`: they may have run.
    Timeout,
    /// Queued, never written (the connection was lost first): they did not run.
    NotSent,
    /// The client was closed.
    Closed,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::Unavailable => "redis unavailable",
            Refused::Full => "redis outbox full",
            Refused::Closed => "redis client closed",
        })
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Failed::Disconnected => "redis connection lost before the replies",
            Failed::Timeout => "redis replies timed out",
            Failed::NotSent => "redis connection lost before the commands were sent",
            Failed::Closed => "redis client closed",
        })
    }
}

impl std::error::Error for Refused {}
impl std::error::Error for Failed {}

/// Counters of one connection (a snapshot from [`Redis::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Writes of queued batches (each one round trip), handshakes not included.
    pub round_trips: u64,
    /// Commands written.
    pub commands: u64,
    /// Successful handshakes.
    pub connects: u64,
    /// Successful handshakes after the first.
    pub reconnects: u64,
    /// Connection attempts that failed (connect, handshake).
    pub connect_failures: u64,
    /// Connections lost or dropped: I/O errors, EOF, bad replies, timeouts.
    pub errors: u64,
    /// Round trips (or handshake steps) that timed out.
    pub timeouts: u64,
    /// Batches refused because Redis was down.
    pub refused_unavailable: u64,
    /// Batches refused because the outbox was full.
    pub refused_full: u64,
    /// Accepted commands that failed (disconnect, timeout, not sent, closed).
    pub failed_commands: u64,
    /// Push values received.
    pub pushes: u64,
}

impl RedisStats {
    /// Adds `other`'s counters (a shard's connections to several masters).
    pub fn merge(&mut self, other: &Self) {
        let Self {
            round_trips,
            commands,
            connects,
            reconnects,
            connect_failures,
            errors,
            timeouts,
            refused_unavailable,
            refused_full,
            failed_commands,
            pushes,
        } = *other;
        self.round_trips += round_trips;
        self.commands += commands;
        self.connects += connects;
        self.reconnects += reconnects;
        self.connect_failures += connect_failures;
        self.errors += errors;
        self.timeouts += timeouts;
        self.refused_unavailable += refused_unavailable;
        self.refused_full += refused_full;
        self.failed_commands += failed_commands;
        self.pushes += pushes;
    }
}

/// The handle code on the shard uses: cheap to clone, not `Send`.
#[derive(Clone)]
pub struct Redis {
    shared: Rc<Shared>,
}

/// The task that owns the socket: run it with `glommio::spawn_local(driver.run())`.
pub struct Driver {
    shared: Rc<Shared>,
    config: ConnConfig,
}

/// A push handler (see [`Redis::set_push_handler`]).
pub type PushHandler = Box<dyn FnMut(Value)>;

struct Shared {
    state: RefCell<State>,
    stats: RefCell<RedisStats>,
    push: RefCell<Option<PushHandler>>,
    up: Cell<bool>,
    limits: (usize, usize),
}

#[derive(Default)]
struct State {
    stopping: bool,
    outbox: Vec<u8>,
    outbox_commands: usize,
    queued: VecDeque<Pending>,
    driver: Option<Waker>,
}

struct Pending {
    commands: usize,
    replies: Vec<Value>,
    slot: Rc<RefCell<Slot>>,
}

#[derive(Default)]
struct Slot {
    result: Option<Result<Vec<Value>, Failed>>,
    waker: Option<Waker>,
}

impl Pending {
    fn resolve(self, result: Result<Vec<Value>, Failed>) {
        let mut slot = self.slot.borrow_mut();
        slot.result = Some(result);
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }
}

/// The replies of one batch, in order; error replies are values ([`Value::Error`]).
/// Dropping it discards them (the batch still runs).
pub struct Reply {
    slot: Rc<RefCell<Slot>>,
}

impl Future for Reply {
    type Output = Result<Vec<Value>, Failed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.slot.borrow_mut();
        match slot.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Redis {
    /// A client and the task to run for it. Nothing connects until the task runs.
    pub fn new(config: ConnConfig) -> (Redis, Driver) {
        let shared = Rc::new(Shared {
            state: RefCell::new(State::default()),
            stats: RefCell::new(RedisStats::default()),
            push: RefCell::new(None),
            up: Cell::new(false),
            limits: (config.outbox_max_commands, config.outbox_max_bytes),
        });
        (Redis { shared: shared.clone() }, Driver { shared, config })
    }

    /// Queues `batch` for the next write, or refuses it at once.
    pub fn send(&self, batch: Batch) -> Result<Reply, Refused> {
        let shared = &self.shared;
        let mut state = shared.state.borrow_mut();
        if state.stopping {
            return Err(Refused::Closed);
        }
        if !shared.up.get() {
            shared.stats.borrow_mut().refused_unavailable += 1;
            return Err(Refused::Unavailable);
        }
        let slot = Rc::new(RefCell::new(Slot::default()));
        if batch.is_empty() {
            slot.borrow_mut().result = Some(Ok(Vec::new()));
            return Ok(Reply { slot });
        }
        let (max_commands, max_bytes) = shared.limits;
        if state.outbox_commands + batch.commands > max_commands || state.outbox.len() + batch.bytes.len() > max_bytes {
            shared.stats.borrow_mut().refused_full += 1;
            return Err(Refused::Full);
        }
        if state.outbox.is_empty() {
            // Keep the batch's allocation rather than copying into an empty outbox.
            state.outbox = batch.bytes;
        } else {
            state.outbox.extend_from_slice(&batch.bytes);
        }
        state.outbox_commands += batch.commands;
        state.queued.push_back(Pending {
            commands: batch.commands,
            replies: Vec::with_capacity(batch.commands),
            slot: slot.clone(),
        });
        if let Some(w) = state.driver.take() {
            w.wake();
        }
        Ok(Reply { slot })
    }

    /// Connected and handshaken: `send` accepts batches.
    pub fn is_up(&self) -> bool {
        self.shared.up.get()
    }

    /// Successful handshakes so far: it moves when a new connection (maybe to a
    /// restarted Redis) came up, which is what a caller that sets state up per
    /// connection watches.
    pub fn generation(&self) -> u64 {
        self.shared.stats.borrow().connects
    }

    /// The counters so far.
    pub fn stats(&self) -> RedisStats {
        *self.shared.stats.borrow()
    }

    /// Commands queued and not yet written.
    pub fn queued_commands(&self) -> usize {
        self.shared.state.borrow().outbox_commands
    }

    /// Where push values go (otherwise they are counted and dropped). The handler must
    /// not replace itself.
    pub fn set_push_handler(&self, handler: PushHandler) {
        *self.shared.push.borrow_mut() = Some(handler);
    }

    /// Stops the task: queued batches fail with [`Failed::Closed`], later sends are
    /// refused, the socket is closed.
    pub fn close(&self) {
        let mut state = self.shared.state.borrow_mut();
        state.stopping = true;
        if let Some(w) = state.driver.take() {
            w.wake();
        }
    }
}

/// Why a connection ended (logged, then a reconnect).
#[derive(Debug)]
enum ConnError {
    Io(io::Error),
    Closed,
    Timeout,
    Protocol(DecodeError),
    /// A reply that made no sense where it came (a handshake refused, a reply while
    /// idle).
    Unexpected(String),
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "{e}"),
            ConnError::Closed => f.write_str("closed by the server"),
            ConnError::Timeout => f.write_str("timed out"),
            ConnError::Protocol(e) => write!(f, "{e}"),
            ConnError::Unexpected(what) => f.write_str(what),
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::TimedOut {
            ConnError::Timeout
        } else {
            ConnError::Io(e)
        }
    }
}

/// A socket and its read buffer: `buf[start..end]` is read and not yet decoded.
/// The socket: plain, or TLS over it (`rediss://`).
enum Stream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl futures_lite::io::AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    limits: Limits,
}

impl Conn {
    /// The next whole value in the buffer, if there is one.
    fn next_value(&mut self) -> Result<Option<Value>, ConnError> {
        match resp::decode(&self.buf[self.start..self.end], &self.limits) {
            Ok(Some((value, used))) => {
                self.start += used;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                    if self.buf.len() > 4 * READ_BUFFER {
                        // A large reply is done: give its buffer back.
                        self.buf = vec![0; READ_BUFFER];
                    }
                }
                Ok(Some(value))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(ConnError::Protocol(e)),
        }
    }

    /// Room after `end` to read into: compacts, or grows up to the largest reply.
    fn make_room(&mut self) -> Result<(), ConnError> {
        if self.end < self.buf.len() {
            return Ok(());
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            return Ok(());
        }
        let most = self.limits.max_frame_bytes.saturating_add(READ_BUFFER);
        if self.buf.len() >= most {
            return Err(ConnError::Protocol(DecodeError::FrameTooLarge));
        }
        let size = (self.buf.len() * 2).min(most);
        self.buf.resize(size, 0);
        Ok(())
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        if let Err(e) = self.make_room() {
            return Poll::Ready(Err(e));
        }
        let end = self.end;
        match Pin::new(&mut self.stream).poll_read(cx, &mut self.buf[end..]) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(ConnError::Closed)),
            Poll::Ready(Ok(n)) => {
                self.end += n;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    async fn fill(&mut self) -> Result<(), ConnError> {
        futures_lite::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// The next value that is not a push (pushes go to `on_push`).
    async fn reply(&mut self, on_push: &mut dyn FnMut(Value)) -> Result<Value, ConnError> {
        loop {
            match self.next_value()? {
                Some(Value::Push(items)) => on_push(Value::Push(items)),
                Some(v) => return Ok(v),
                None => self.fill().await?,
            }
        }
    }
}

/// What ended an idle wait.
enum Idle {
    Work,
    Stop,
    Read,
}

impl Driver {
    /// Connects, serves batches, reconnects with backoff, until [`Redis::close`].
    pub async fn run(self) {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (Rc::as_ptr(&self.shared) as usize as u64);
        let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max, seed);
        let mut next_addr = 0;
        let mut down_logged = false;
        while !self.stopping() {
            let addr = self.config.addrs[next_addr % self.config.addrs.len().max(1)];
            next_addr += 1;
            match self.connect(addr).await {
                Ok(mut conn) => {
                    backoff.reset();
                    {
                        let mut stats = self.shared.stats.borrow_mut();
                        stats.connects += 1;
                        if stats.connects > 1 {
                            stats.reconnects += 1;
                        }
                    }
                    info!(%addr, "redis connected");
                    down_logged = false;
                    self.shared.up.set(true);
                    let ended = self.serve(&mut conn).await;
                    self.shared.up.set(false);
                    self.fail_queued(Failed::NotSent);
                    if let Err(e) = ended {
                        self.shared.stats.borrow_mut().errors += 1;
                        warn!(%addr, error = %e, "redis connection lost");
                        down_logged = true;
                    }
                }
                Err(e) => {
                    self.shared.stats.borrow_mut().connect_failures += 1;
                    if !down_logged {
                        warn!(%addr, error = %e, "redis unavailable; retrying with backoff");
                        down_logged = true;
                    }
                }
            }
            if self.stopping() {
                break;
            }
            let delay = backoff.next_delay();
            futures_lite::future::or(glommio::timer::sleep(delay), self.wait_stop()).await;
        }
        self.shared.up.set(false);
        self.fail_queued(Failed::Closed);
    }

    fn stopping(&self) -> bool {
        self.shared.state.borrow().stopping
    }

    async fn wait_stop(&self) {
        futures_lite::future::poll_fn(|cx| {
            let mut state = self.shared.state.borrow_mut();
            if state.stopping {
                return Poll::Ready(());
            }
            state.driver = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn fail_queued(&self, why: Failed) {
        let queued = {
            let mut state = self.shared.state.borrow_mut();
            state.outbox.clear();
            state.outbox_commands = 0;
            std::mem::take(&mut state.queued)
        };
        self.fail(queued, why);
    }

    fn fail(&self, batches: impl IntoIterator<Item = Pending>, why: Failed) {
        for p in batches {
            self.shared.stats.borrow_mut().failed_commands += p.commands as u64;
            p.resolve(Err(why));
        }
    }

    fn on_push(&self, value: Value) {
        self.shared.stats.borrow_mut().pushes += 1;
        let handler = self.shared.push.borrow_mut().take();
        if let Some(mut handler) = handler {
            handler(value);
            let mut slot = self.shared.push.borrow_mut();
            if slot.is_none() {
                *slot = Some(handler);
            }
        }
    }

    /// `f` within `command_timeout`, or a timeout (counted).
    async fn timed<T>(&self, f: impl Future<Output = Result<T, ConnError>>) -> Result<T, ConnError> {
        let limit = self.config.command_timeout;
        let timeout = async {
            glommio::timer::sleep(limit).await;
            Err(ConnError::Timeout)
        };
        let r = futures_lite::future::or(f, timeout).await;
        if matches!(r, Err(ConnError::Timeout)) {
            self.shared.stats.borrow_mut().timeouts += 1;
        }
        r
    }

    /// One handshake step: write `cmd`, read one reply.
    async fn step(&self, conn: &mut Conn, args: &[&[u8]]) -> Result<Value, ConnError> {
        let mut cmd = Vec::new();
        resp::encode_command(&mut cmd, args);
        self.timed(async {
            conn.stream.write_all(&cmd).await?;
            conn.reply(&mut |v| self.on_push(v)).await
        })
        .await
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, ConnError> {
        let stream = TcpStream::connect_timeout(addr, self.config.connect_timeout.max(Duration::from_millis(1)))
            .await
            .map_err(|e| ConnError::from(io::Error::from(e)))?;
        stream
            .set_nodelay(true)
            .map_err(|e| ConnError::from(io::Error::from(e)))?;
        let stream = match &self.config.tls {
            None => Stream::Plain(stream),
            Some(tls) => {
                let connector = futures_rustls::TlsConnector::from(tls.config.clone());
                let name = tls.name.clone();
                let tls_stream = self
                    .timed(async { connector.connect(name, stream).await.map_err(ConnError::from) })
                    .await?;
                Stream::Tls(Box::new(tls_stream))
            }
        };
        let mut conn = Conn {
            stream,
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
            limits: self.config.limits,
        };
        let user = self.config.user.as_deref().unwrap_or("default").as_bytes();
        let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
        if let Some(pw) = &self.config.password {
            hello.extend_from_slice(&[b"AUTH", user, pw.expose()]);
        }
        match self.step(&mut conn, &hello).await? {
            Value::Map(_) | Value::Array(_) => {}
            // Before Redis 6 (no HELLO) or RESP3 refused: RESP2, then AUTH on its own.
            Value::Error(e) if e.starts_with(b"NOPROTO") || e.starts_with(b"ERR unknown command") => {
                if let Some(pw) = &self.config.password {
                    let mut auth: Vec<&[u8]> = vec![b"AUTH"];
                    if self.config.user.is_some() {
                        auth.push(user);
                    }
                    auth.push(pw.expose());
                    expect_ok(self.step(&mut conn, &auth).await?, "AUTH")?;
                }
            }
            other => return Err(unexpected("HELLO", &other)),
        }
        if self.config.db != 0 {
            let db = self.config.db.to_string();
            expect_ok(self.step(&mut conn, &[b"SELECT", db.as_bytes()]).await?, "SELECT")?;
        }
        Ok(conn)
    }

    /// Serves batches on a handshaken connection until it fails or the client closes.
    async fn serve(&self, conn: &mut Conn) -> Result<(), ConnError> {
        let mut write = Vec::new();
        loop {
            match self.idle(conn).await? {
                Idle::Stop => return Ok(()),
                Idle::Read => {
                    // Only pushes may arrive unasked.
                    while let Some(v) = conn.next_value()? {
                        match v {
                            Value::Push(_) => self.on_push(v),
                            other => return Err(unexpected("an idle connection", &other)),
                        }
                    }
                    continue;
                }
                Idle::Work => {}
            }
            let mut batches = {
                let mut state = self.shared.state.borrow_mut();
                write.clear();
                std::mem::swap(&mut write, &mut state.outbox);
                let commands = std::mem::take(&mut state.outbox_commands);
                let mut stats = self.shared.stats.borrow_mut();
                stats.round_trips += 1;
                stats.commands += commands as u64;
                std::mem::take(&mut state.queued)
            };
            let exchange = self
                .timed(async {
                    conn.stream.write_all(&write).await?;
                    while let Some(batch) = batches.front_mut() {
                        while batch.replies.len() < batch.commands {
                            let v = conn.reply(&mut |v| self.on_push(v)).await?;
                            batch.replies.push(v);
                        }
                        if let Some(mut done) = batches.pop_front() {
                            let replies = std::mem::take(&mut done.replies);
                            done.resolve(Ok(replies));
                        }
                    }
                    Ok(())
                })
                .await;
            if write.capacity() > 4 * self.shared.limits.1.min(1 << 20) {
                write = Vec::new();
            }
            if let Err(e) = exchange {
                let why = if matches!(e, ConnError::Timeout) {
                    Failed::Timeout
                } else {
                    Failed::Disconnected
                };
                self.fail(batches, why);
                return Err(e);
            }
        }
    }

    /// Waits for work, a close, or bytes (or EOF) from the server.
    async fn idle(&self, conn: &mut Conn) -> Result<Idle, ConnError> {
        futures_lite::future::poll_fn(|cx| {
            {
                let mut state = self.shared.state.borrow_mut();
                if state.stopping {
                    return Poll::Ready(Ok(Idle::Stop));
                }
                if !state.queued.is_empty() {
                    return Poll::Ready(Ok(Idle::Work));
                }
                state.driver = Some(cx.waker().clone());
            }
            conn.poll_fill(cx).map(|r| r.map(|()| Idle::Read))
        })
        .await
    }
}

fn expect_ok(v: Value, what: &str) -> Result<(), ConnError> {
    match v {
        Value::Simple(s) if s == b"OK" => Ok(()),
        other => Err(unexpected(what, &other)),
    }
}

fn unexpected(what: &str, v: &Value) -> ConnError {
    let shown = match v {
        // Error replies say why (WRONGPASS, NOAUTH, ...); they never echo a password.
        Value::Error(e) => String::from_utf8_lossy(&e[..e.len().min(200)]).into_owned(),
        _ => "an unexpected reply".to_owned(),
    };
    ConnError::Unexpected(format!("{what}: {shown}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_encode_their_commands() {
        let mut b = Batch::new();
        assert!(b.is_empty());
        b.cmd(&["SET", "k", "v"]).cmd(&["GET", "k"]);
        assert_eq!(
            (b.len(), b.bytes()),
            (
                2,
                resp::encoded_len(&["SET", "k", "v"]) + resp::encoded_len(&["GET", "k"])
            )
        );
    }
}
