//! End-to-end tests: real shards on real sockets, driven by a client built on the
//! protocol core in the client role.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Server;
use super::shard::ShardHandle;
use crate::auth::{AuthMode, Authenticator, MintKey, MintOptions, Secret};
use crate::config::Config;
use crate::limits::Limits;
use crate::metrics::{Registry, ShardMetrics};
use crate::proto::close::CloseCode;
use crate::proto::connection::{Connection, Event, Message};

pub(crate) const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

thread_local! {
    /// A preemption timer for the shards of servers this thread starts (the default is
    /// `SHARD_PREEMPT_TIMER`): a short one widens the window in which glommio parks
    /// an executor with runnable tasks, so a test can reproduce it in seconds.
    pub(crate) static PREEMPT_TIMER: std::cell::Cell<Option<Duration>> = const { std::cell::Cell::new(None) };
}

/// The offset into the allowed CPUs at which the next server started in this test
/// process pins its shard 0 (see [`first_cpu_for_next_server`]).
static NEXT_FIRST_CPU: AtomicUsize = AtomicUsize::new(0);

/// Where the shards of a server started now begin on the allowed CPUs (test builds
/// only; `Server::start_with_tls` adds the shard id and `cpu_for_shard` wraps round).
///
/// A real server pins shard 0 to the first allowed CPU. Tests run in parallel, so if
/// every test server did the same, all the one-shard servers would share one core and
/// the timing assertions (round trips, heartbeat and drain windows) would measure each
/// other's load. Each server takes the next `shards` CPUs instead, so consecutive
/// servers land on consecutive cores, round and round the allowed set.
pub(crate) fn first_cpu_for_next_server(shards: usize) -> usize {
    NEXT_FIRST_CPU.fetch_add(shards, Ordering::Relaxed)
}

/// The shard whose ticker is to lose its next wake-up: the address of its handle, 0
/// for none (see [`park_ticker_if_asked`]).
static PARK_TICKER: AtomicUsize = AtomicUsize::new(0);

/// Asks the ticker of `handle`'s shard to park at the start of its next round, with no
/// timer and nothing else that would wake it: a lost wake-up, which leaves the shard
/// sleeping through its ticks until the watchdog wakes the ticker through its `Waker`
/// (see `server::watchdog`).
fn park_ticker(handle: &ShardHandle) {
    let me = std::ptr::from_ref(handle) as usize;
    PARK_TICKER
        .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
        .expect("one parked ticker at a time");
}

/// Whether the ticker asked to park by [`park_ticker`] has taken the request.
fn ticker_parked() -> bool {
    PARK_TICKER.load(Ordering::Acquire) == 0
}

/// Called by every shard's ticker before it sleeps (test builds only): parks it, once,
/// when [`park_ticker`] asked for this shard. The future is pending once without
/// keeping the waker it is given, so no timer, I/O or doorbell byte brings it back;
/// only a wake of the ticker task's own `Waker` from another thread does (glommio's
/// cross-thread wake, the watchdog's `ShardHandle::kick`).
pub(crate) async fn park_ticker_if_asked(handle: &ShardHandle) {
    let me = std::ptr::from_ref(handle) as usize;
    if PARK_TICKER
        .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    let mut woken = false;
    std::future::poll_fn(|_| {
        if std::mem::replace(&mut woken, true) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

/// Whether an interoperability test (a Python client nobody here wrote) runs: true when
/// `python3` can import `imports`, false only when the caller opted out with
/// `WSGATE_SKIP_INTEROP=1` (said on stderr). Otherwise a missing interpreter or package
/// fails the test with the way to install it, so that a plain `cargo test` never
/// passes it silently.
pub(crate) fn python_interop(test: &str, imports: &str) -> bool {
    if std::env::var_os("WSGATE_SKIP_INTEROP").is_some_and(|v| v == "1") {
        eprintln!("{test}: skipped (WSGATE_SKIP_INTEROP=1)");
        return false;
    }
    let how = "install it with `python3 -m pip install \"websockets>=13\"` or run scripts/test.sh, \
               which does; set WSGATE_SKIP_INTEROP=1 to skip this test";
    match std::process::Command::new("python3")
        .args(["-c", &format!("import {imports}")])
        .output()
    {
        Err(e) => {
            panic!("{test} needs python3 with the websockets package (>= 13), and python3 does not run ({e}): {how}")
        }
        Ok(out) if !out.status.success() => panic!(
            "{test} needs python3 with the websockets package (>= 13), and `import {imports}` failed ({}: {}): {how}",
            out.status,
            // The exception, not the traceback.
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("no output")
        ),
        Ok(_) => true,
    }
}

/// Runs scripts/interop_client.py with `args` (the URL first, then its options),
/// checks that every one of its checks passed (it exits non-zero on the first failure)
/// and returns what it printed.
pub(crate) fn run_interop_client<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/interop_client.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A server on an ephemeral port for one test: 2 shards, echo on, no auth, edge
/// limits off and a 20 ms tick unless the test's `tweak` says otherwise; its shards
/// start at a rotating CPU ([`first_cpu_for_next_server`]). Dropping it drains the
/// server and waits for its threads.
pub(crate) struct TestServer {
    pub server: Option<Server>,
    pub registry: Arc<Registry>,
    pub addr: SocketAddr,
    /// The shards' tick, for [`TestServer::wait_for_shard_time`].
    tick: Duration,
}

impl TestServer {
    pub fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 2,
            max_connections: 1000,
            echo: true,
            tick: Duration::from_millis(20),
            // Tests that need the disk store set it with their own data directory.
            store: crate::config::StoreKind::Memory,
            ..Config::default()
        };
        cfg.auth.mode = AuthMode::None;
        // Tests open many connections from one address; the ones about edge limits set
        // them.
        cfg.edge = crate::edge::EdgeConfig::off();
        tweak(&mut cfg);
        let registry = Arc::new(Registry::new(cfg.shards));
        let auth = Arc::new(Authenticator::new(&cfg.auth).expect("auth config"));
        let tick = cfg.tick;
        let server = Server::start(Arc::new(cfg), registry.clone(), auth).expect("server starts");
        let addr = server.local_addr();
        Self {
            server: Some(server),
            registry,
            addr,
            tick,
        }
    }

    /// The running server's shard handles.
    fn handles(&self) -> &[Arc<ShardHandle>] {
        &self.server.as_ref().expect("the server runs").handles
    }

    /// Sums the shards' published metrics (published every tick).
    pub fn metrics(&self) -> ShardMetrics {
        let mut total = ShardMetrics::default();
        for shard in self.registry.snapshot() {
            total.merge(shard);
        }
        total
    }

    pub fn wait_for(&self, what: &str, mut done: impl FnMut(&ShardMetrics) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.metrics();
            if done(&m) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {m:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until every shard has lived `span` from now by its own clock and published
    /// after it: a deadline `span` away has fired on its timer wheel and the metrics
    /// show it. Counted in ticks, which a shard runs `tick` apart at the soonest
    /// (sleep, then turn), so a starved shard is waited for instead of overrun by a
    /// guessed wall-clock sleep: `span / tick` rounded up, one more for the wheel's
    /// rounding of a deadline up to its tick, one for a tick already under way now, and
    /// one so that the turn that fired it has published (a tick is counted as it starts
    /// and publishes as it ends).
    pub fn wait_for_shard_time(&self, span: Duration) {
        let more = span.as_nanos().div_ceil(self.tick.as_nanos()) as u64 + 3;
        let targets: Vec<u64> = self.handles().iter().map(|h| h.ticks() + more).collect();
        let deadline = Instant::now() + span + Duration::from_secs(10);
        loop {
            let ticks: Vec<u64> = self.handles().iter().map(|h| h.ticks()).collect();
            if ticks.iter().zip(&targets).all(|(t, target)| t >= target) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {span:?} of shard time: ticks {ticks:?}, waiting for {targets:?}"
            );
            std::thread::sleep(self.tick);
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.drain(CloseCode::GOING_AWAY);
            server.join();
        }
    }
}

/// A WebSocket client on a blocking socket, using the protocol core as a client.
pub(crate) struct Client {
    pub stream: TcpStream,
    pub ws: Connection,
    limits: Limits,
    buf: Vec<u8>,
    /// Messages that arrived compressed (permessage-deflate), inflated by `next_event`.
    pub compressed_in: usize,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let (client, response) = Self::handshake(addr, UPGRADE.as_bytes());
        assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
        client
    }

    /// Sends `request`, reads the HTTP response head; returns the client and the head.
    pub fn handshake(addr: SocketAddr, request: &[u8]) -> (Self, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.write_all(request).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        let client = Self {
            stream,
            ws: Connection::new_client(Instant::now(), 0x1234),
            limits: Limits::default(),
            buf: Vec::new(),
            compressed_in: 0,
        };
        (client, String::from_utf8_lossy(&head).into_owned())
    }

    pub fn send_text(&mut self, text: &str) {
        let mut out = Vec::new();
        self.ws.write_message(&mut out, true, text.as_bytes()).unwrap();
        self.stream.write_all(&out).unwrap();
    }

    /// Sends a close frame with `code` (masked, as a client must).
    pub fn send_close(&mut self, code: u16) {
        let mut out = Vec::new();
        crate::proto::frame::encode_frame(
            &mut out,
            true,
            crate::proto::frame::OpCode::Close,
            &code.to_be_bytes(),
            Some([9, 9, 9, 9]),
        );
        self.send_raw(&out);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads until the next event; answers pings on the way.
    pub fn next_event(&mut self) -> Option<OwnedEvent> {
        loop {
            if !self.buf.is_empty() {
                let now = Instant::now();
                let (used, event) = self.ws.handle_input(now, &self.limits, &mut self.buf);
                let mut compressed = false;
                let owned = event.map(|e| match e {
                    Event::Message(Message::Text(t)) => OwnedEvent::Text(t.into_owned()),
                    Event::Message(Message::Binary(b)) => OwnedEvent::Binary(b.into_owned()),
                    Event::Close { code, .. } => OwnedEvent::Close(code.map(|c| c.0)),
                    Event::Compressed { text, payload } => {
                        compressed = true;
                        let mut out = Vec::new();
                        crate::proto::deflate::Inflater::default()
                            .inflate(&payload, text, u64::MAX, &mut out)
                            .expect("the server's compressed message inflates");
                        if text {
                            OwnedEvent::Text(String::from_utf8(out).expect("validated"))
                        } else {
                            OwnedEvent::Binary(out)
                        }
                    }
                    Event::Error(e) => panic!("server broke the protocol: {e}"),
                });
                self.compressed_in += usize::from(compressed);
                self.buf.drain(..used);
                while let Some(frame) = self.ws.poll_transmit() {
                    let _ = self.stream.write_all(frame.as_bytes());
                }
                if owned.is_some() {
                    return owned;
                }
            }
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OwnedEvent {
    Text(String),
    Binary(Vec<u8>),
    Close(Option<u16>),
}

#[test]
fn echo_round_trip_over_real_sockets() {
    let server = TestServer::start(|_| {});
    let mut client = Client::connect(server.addr);
    client.send_text("hello");
    assert_eq!(client.next_event(), Some(OwnedEvent::Text("hello".into())));
    server.wait_for("the upgrade to be counted", |m| m.upgrades == 1 && m.connections == 1);
}

/// Reads server frames (unmasked, payloads under 126 bytes) off `client`'s socket
/// until `n` have arrived: (opcode, payload) in wire order, pongs included.
fn raw_frames(client: &mut Client, n: usize) -> Vec<(u8, Vec<u8>)> {
    let mut buf = std::mem::take(&mut client.buf);
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while out.len() < n {
        while buf.len() >= 2 && buf.len() >= 2 + usize::from(buf[1] & 0x7f) && out.len() < n {
            let len = usize::from(buf[1] & 0x7f);
            assert!(len < 126, "short frames only");
            out.push((buf[0] & 0x0f, buf[2..2 + len].to_vec()));
            buf.drain(..2 + len);
        }
        if out.len() == n {
            break;
        }
        let got = client.stream.read(&mut chunk).expect("frames from the server");
        assert!(got > 0, "the server closed after {} frames: {out:?}", out.len());
        buf.extend_from_slice(&chunk[..got]);
    }
    out
}

/// A masked client frame.
fn client_frame(fin: bool, opcode: crate::proto::frame::OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    crate::proto::frame::encode_frame(&mut out, fin, opcode, payload, Some([1, 2, 3, 4]));
    out
}

#[test]
fn every_ping_is_answered_in_order_and_before_what_later_input_caused() {
    use crate::proto::frame::OpCode;
    let server = TestServer::start(|_| {});
    let mut client = Client::connect(server.addr);
    // Ten pings in one write: ten pongs, in order, with their payloads.
    let mut burst = Vec::new();
    for i in 0..10u8 {
        burst.extend(client_frame(true, OpCode::Ping, &[b'0' + i]));
    }
    client.stream.write_all(&burst).unwrap();
    let pongs = raw_frames(&mut client, 10);
    let expected: Vec<(u8, Vec<u8>)> = (0..10u8).map(|i| (OpCode::Pong as u8, vec![b'0' + i])).collect();
    assert_eq!(pongs, expected);
    // A ping between the fragments of a message: its pong leaves before the echo of
    // the message, which was finished by input that came after the ping.
    let mut mixed = client_frame(false, OpCode::Text, b"hel");
    mixed.extend(client_frame(true, OpCode::Ping, b"mid"));
    mixed.extend(client_frame(true, OpCode::Continuation, b"lo"));
    mixed.extend(client_frame(true, OpCode::Ping, b"end"));
    client.stream.write_all(&mixed).unwrap();
    let frames = raw_frames(&mut client, 3);
    assert_eq!(
        frames,
        vec![
            (OpCode::Pong as u8, b"mid".to_vec()),
            (OpCode::Text as u8, b"hello".to_vec()),
            (OpCode::Pong as u8, b"end".to_vec()),
        ]
    );
}

#[test]
fn malformed_handshakes_get_their_http_status() {
    let server = TestServer::start(|_| {});
    let cases = [
        (UPGRADE.replace("Version: 13", "Version: 8"), "HTTP/1.1 426"),
        (UPGRADE.replace("GET /ws", "GET /nope"), "HTTP/1.1 404"),
        (UPGRADE.replace("GET /ws", "POST /ws"), "HTTP/1.1 405"),
        (UPGRADE.replace("Upgrade: websocket\r\n", ""), "HTTP/1.1 400"),
        ("BLAH\r\n\r\n".to_owned(), "HTTP/1.1 400"),
        (
            format!("GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(9000)),
            "HTTP/1.1 431",
        ),
    ];
    for (request, expected) in cases {
        let (mut client, head) = Client::handshake(server.addr, request.as_bytes());
        assert!(
            head.starts_with(expected),
            "{expected} for {request:.40?}, got {head:?}"
        );
        let connection = head.lines().find(|l| l.starts_with("Connection:")).unwrap_or_default();
        assert!(connection.contains("close"), "{head}");
        // The server closes after the response.
        let mut rest = Vec::new();
        let _ = client.stream.read_to_end(&mut rest);
    }
    server.wait_for("failures to be counted", |m| {
        m.handshake_failures.values().sum::<u64>() == 6
    });
}

#[test]
fn frames_pipelined_behind_the_request_are_processed() {
    let server = TestServer::start(|_| {});
    let mut request = UPGRADE.as_bytes().to_vec();
    let mut ws = Connection::new_client(Instant::now(), 99);
    ws.write_message(&mut request, true, b"early").unwrap();
    let (mut client, head) = Client::handshake(server.addr, &request);
    assert!(head.starts_with("HTTP/1.1 101"));
    assert_eq!(client.next_event(), Some(OwnedEvent::Text("early".into())));
}

#[test]
fn protocol_violations_get_their_close_codes() {
    let server = TestServer::start(|cfg| {
        cfg.limits.max_frame_bytes = 1024;
        cfg.limits.max_message_bytes = 4096;
    });
    let mask = [1, 2, 3, 4];
    let too_big = {
        let mut f = crate::proto::frame::encode_header(true, crate::proto::frame::OpCode::Binary, 2000, Some(mask))
            .as_bytes()
            .to_vec();
        f.extend_from_slice(&[0; 16]);
        f
    };
    let mut bad_utf8 = Vec::new();
    crate::proto::frame::encode_frame(
        &mut bad_utf8,
        true,
        crate::proto::frame::OpCode::Text,
        &[0xed, 0xa0, 0x80],
        Some(mask),
    );
    let cases: [(&[u8], u16); 4] = [
        (&too_big, 1009),
        (&[0xc1, 0x80, 1, 2, 3, 4], 1002), // RSV1 without an extension
        (b"\x81\x05hello", 1002),          // unmasked client frame
        (&bad_utf8, 1007),
    ];
    for (frame, code) in cases {
        let mut client = Client::connect(server.addr);
        client.send_raw(frame);
        assert_eq!(client.next_event(), Some(OwnedEvent::Close(Some(code))), "case {code}");
        // The server shuts its side down after the close frame.
        assert_eq!(client.next_event(), None);
    }
    server.wait_for("errors to be counted", |m| m.protocol_errors.values().sum::<u64>() == 4);
}

#[test]
fn heartbeat_pings_and_closes_a_silent_client() {
    let server = TestServer::start(|cfg| {
        cfg.limits.ping_interval = Duration::from_millis(200);
        cfg.limits.idle_timeout = Duration::from_millis(600);
    });
    // A live client answers pings (Client does so while it reads) and stays open.
    let mut live = Client::connect(server.addr);
    // A silent client reads raw bytes and never answers.
    let (silent, _) = Client::handshake(server.addr, UPGRADE.as_bytes());
    let silent = std::thread::spawn(move || {
        let mut stream = silent.stream;
        let started = Instant::now();
        let mut raw = Vec::new();
        let mut chunk = [0u8; 64];
        while let Ok(n) = stream.read(&mut chunk) {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
        }
        (raw, started.elapsed())
    });
    live.stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        assert_eq!(live.next_event(), None, "nothing but pings for the live client");
    }
    live.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (raw, waited) = silent.join().unwrap();
    assert_eq!(&raw[..2], [0x89, 0x00], "a ping first: {raw:?}");
    assert_eq!(&raw[2..6], [0x88, 0x13, 0x03, 0xe9], "then close 1001: {raw:?}");
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    live.send_text("still here");
    assert_eq!(live.next_event(), Some(OwnedEvent::Text("still here".into())));
    server.wait_for("the heartbeat timeout", |m| {
        m.heartbeat_timeouts == 1 && m.connections == 1
    });
}

#[test]
fn connection_cap_answers_503_before_the_upgrade() {
    let server = TestServer::start(|cfg| {
        cfg.shards = 1;
        cfg.max_connections = 2;
    });
    let _a = Client::connect(server.addr);
    let _b = Client::connect(server.addr);
    let (_, head) = Client::handshake(server.addr, UPGRADE.as_bytes());
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    server.wait_for("the refusal", |m| {
        m.handshake_failures.get("connection_limit") == Some(&1)
    });
}

#[test]
fn slow_handshakes_are_cut_off_and_bounded() {
    let server = TestServer::start(|cfg| {
        cfg.shards = 1;
        cfg.handshake_timeout = Duration::from_millis(300);
        cfg.max_handshakes_per_shard = 2;
    });
    let mut slow: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    server.wait_for("two handshakes in progress", |m| m.handshakes_in_progress == 2);
    // A third handshake is over the bound: refused at once.
    let (_, head) = Client::handshake(server.addr, UPGRADE.as_bytes());
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    // The slow ones are closed at the deadline.
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    server.wait_for("the timeouts", |m| m.handshake_timeouts == 2);
    // Real clients get through again.
    let mut client = Client::connect(server.addr);
    client.send_text("ok");
    assert_eq!(client.next_event(), Some(OwnedEvent::Text("ok".into())));
}

#[test]
fn drain_closes_every_client_with_1001_and_finishes() {
    let mut server = TestServer::start(|cfg| {
        cfg.drain_window = Duration::from_millis(300);
        cfg.drain_timeout = Duration::from_secs(5);
    });
    let mut clients: Vec<Client> = (0..20).map(|_| Client::connect(server.addr)).collect();
    server.wait_for("20 connections", |m| m.connections == 20);
    let started = Instant::now();
    let running = server.server.take().unwrap();
    running.drain(CloseCode::GOING_AWAY);
    let readers: Vec<_> = clients
        .drain(..)
        .map(|mut client| {
            std::thread::spawn(move || {
                assert_eq!(client.next_event(), Some(OwnedEvent::Close(Some(1001))));
                let at = started.elapsed();
                assert_eq!(client.next_event(), None, "socket closed after the handshake");
                at
            })
        })
        .collect();
    let mut close_times: Vec<Duration> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    running.join();
    let finished = started.elapsed();
    assert!(finished < Duration::from_secs(3), "drain took {finished:?}");
    // Spread over the window, not all at once.
    close_times.sort();
    assert!(
        close_times[19] - close_times[0] >= Duration::from_millis(100),
        "{close_times:?}"
    );
    // New connections are refused once draining.
    assert!(TcpStream::connect(server.addr).is_err() || status_after_drain(server.addr));
}

fn status_after_drain(addr: SocketAddr) -> bool {
    let (_, head) = Client::handshake(addr, UPGRADE.as_bytes());
    !head.starts_with("HTTP/1.1 101")
}

#[test]
fn slow_consumer_is_closed_while_a_fast_neighbour_keeps_its_latency() {
    let server = TestServer::start(|cfg| {
        cfg.shards = 1;
        cfg.send_queue_bytes = 64 * 1024;
    });
    let mut fast = Client::connect(server.addr);
    let mut slow = Client::connect(server.addr);
    // The slow client asks for echoes and never reads them.
    let payload = "x".repeat(16 * 1024);
    let writer = {
        let mut stream = slow.stream.try_clone().unwrap();
        let mut ws = Connection::new_client(Instant::now(), 5);
        std::thread::spawn(move || {
            let mut out = Vec::new();
            for _ in 0..2000 {
                out.clear();
                ws.write_message(&mut out, true, payload.as_bytes()).unwrap();
                if stream.write_all(&out).is_err() {
                    break;
                }
            }
        })
    };
    let mut worst = Duration::ZERO;
    for i in 0..200 {
        let sent = Instant::now();
        fast.send_text(&format!("ping {i}"));
        assert_eq!(fast.next_event(), Some(OwnedEvent::Text(format!("ping {i}"))));
        worst = worst.max(sent.elapsed());
    }
    server.wait_for("the slow consumer to be closed", |m| m.slow_consumer_closes == 1);
    writer.join().unwrap();
    assert!(
        worst < Duration::from_millis(200),
        "fast client's worst round trip {worst:?}"
    );
    // The slow client finally reads: what was written before the policy hit, then 1008.
    let mut last = None;
    while let Some(event) = slow.next_event() {
        last = Some(event);
        if matches!(last, Some(OwnedEvent::Close(_))) {
            break;
        }
    }
    assert_eq!(last, Some(OwnedEvent::Close(Some(1008))));
}

/// Opens `count` connections in batches, exchanges a message on each, closes them all
/// cleanly, and checks that the shard's heap returns to where it was after a warm-up
/// batch: nothing leaks on the connection path.
fn open_and_close_in_batches(batches: usize, per_batch: usize) {
    // Short deadlines, so the wheel entries of closed connections fire (and go)
    // between batches.
    let deadline = Duration::from_millis(100);
    let server = TestServer::start(|cfg| {
        cfg.shards = 1;
        cfg.max_connections = per_batch * 2;
        cfg.max_handshakes_per_shard = per_batch;
        cfg.handshake_timeout = deadline;
        cfg.limits.close_timeout = deadline;
    });
    let mut baseline = None;
    for batch in 0..=batches {
        let mut clients: Vec<Client> = (0..per_batch).map(|_| Client::connect(server.addr)).collect();
        for (i, client) in clients.iter_mut().enumerate() {
            let text = format!("message {i}");
            client.send_text(&text);
            assert_eq!(client.next_event(), Some(OwnedEvent::Text(text)));
            client.send_close(1000);
        }
        for client in &mut clients {
            assert_eq!(client.next_event(), Some(OwnedEvent::Close(Some(1000))));
            assert_eq!(client.next_event(), None);
        }
        let closed = ((batch + 1) * per_batch) as u64;
        server.wait_for("every connection closed", |m| {
            m.connections == 0 && m.closed == closed && m.handshakes_in_progress == 0
        });
        // Until the last deadlines have fired on the shard's wheel and it has published.
        server.wait_for_shard_time(deadline);
        let heap = server.metrics().test_heap_bytes;
        eprintln!("batch {batch}: heap {heap}");
        match baseline {
            None => baseline = Some(heap),
            Some(base) => assert!(
                (heap - base).abs() <= 16 * 1024,
                "batch {batch}: shard heap {heap} B vs {base} B after the warm-up batch"
            ),
        }
    }
}

#[test]
fn shard_memory_returns_to_its_start_after_connections_close() {
    open_and_close_in_batches(10, 200);
}

/// The same at scale: a million connections in batches of 1,000 (several minutes; run
/// with `cargo test --release -- --ignored million`).
#[test]
#[ignore = "takes minutes; run by hand"]
fn million_connections_open_and_close_without_leaking() {
    open_and_close_in_batches(1000, 1000);
}

#[test]
fn many_connections_open_and_close_and_every_slot_is_freed() {
    let server = TestServer::start(|cfg| cfg.max_connections = 10_000);
    for _batch in 0..5 {
        let mut clients: Vec<Client> = (0..200).map(|_| Client::connect(server.addr)).collect();
        for client in &mut clients {
            client.send_close(1000);
        }
        for client in &mut clients {
            assert_eq!(client.next_event(), Some(OwnedEvent::Close(Some(1000))));
        }
    }
    server.wait_for("all closed", |m| m.connections == 0 && m.closed == 1000);
}

/// Interoperability with a client nobody here wrote: Python's `websockets` package
/// (scripts/interop_client.py). Required: without Python or the package the test fails
/// and says how to install them (`scripts/test.sh` does); `WSGATE_SKIP_INTEROP=1` skips
/// it (see [`python_interop`]).
#[test]
fn interoperates_with_python_websockets() {
    if !python_interop("interoperates_with_python_websockets", "websockets.sync.client") {
        return;
    }
    let server = TestServer::start(|_| {});
    let stdout = run_interop_client([format!("ws://{}/ws", server.addr)]);
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 7, "{stdout}");
}

pub(crate) const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

pub(crate) fn token(user: &str, issued_at: std::time::SystemTime) -> String {
    let options = MintOptions::new(user, MintKey::HmacSecret(Secret::new(SECRET)), issued_at);
    crate::auth::mint(&options).expect("mint")
}

#[test]
fn upgrade_needs_a_valid_token_before_the_101() {
    let server = TestServer::start(|cfg| {
        cfg.auth.mode = AuthMode::Jwt;
        cfg.auth.hmac_secret = Some(Secret::new(SECRET));
    });
    let now = std::time::SystemTime::now();
    // No token: 401 with a Bearer challenge, before any upgrade.
    let (_, head) = Client::handshake(server.addr, UPGRADE.as_bytes());
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(head.contains("WWW-Authenticate: Bearer realm=\"wsgate\""), "{head}");
    // Expired and badly signed tokens: 401 with invalid_token.
    let expired = token("alice", now - Duration::from_secs(7200));
    let forged = {
        let options = MintOptions::new(
            "alice",
            MintKey::HmacSecret(Secret::new("another-secret-that-is-32-bytes-long!")),
            now,
        );
        crate::auth::mint(&options).unwrap()
    };
    for bad in [expired, forged, "not.a.token".to_owned()] {
        let request = UPGRADE.replace("Host:", &format!("Authorization: Bearer {bad}\r\nHost:"));
        let (_, head) = Client::handshake(server.addr, request.as_bytes());
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        assert!(head.contains("error=\"invalid_token\""), "{head}");
        assert!(!head.contains(&bad), "the token is never echoed");
    }
    // A valid token in the header, or in the query for browsers: upgraded.
    let good = token("alice", now);
    let request = UPGRADE.replace("Host:", &format!("Authorization: Bearer {good}\r\nHost:"));
    let (mut client, head) = Client::handshake(server.addr, request.as_bytes());
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    client.send_text("authenticated");
    assert_eq!(client.next_event(), Some(OwnedEvent::Text("authenticated".into())));
    let request = UPGRADE.replace("GET /ws ", &format!("GET /ws?token={good} "));
    let (_, head) = Client::handshake(server.addr, request.as_bytes());
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    server.wait_for("auth counters", |m| {
        m.auth_failures.values().sum::<u64>() == 4
            && m.auth_accepted.get("header") == Some(&1)
            && m.auth_accepted.get("query") == Some(&1)
    });
}

#[test]
fn eof_arriving_with_the_last_data_is_seen_at_once() {
    let server = TestServer::start(|cfg| cfg.shards = 1);
    let mut clients: Vec<Client> = (0..300).map(|_| Client::connect(server.addr)).collect();
    // Data and FIN back to back on many sockets while the shard is busy with them, so
    // the kernel coalesces the two wake-ups into one completion.
    let mut frame = Vec::new();
    clients[0].ws.write_message(&mut frame, true, b"last words").unwrap();
    for client in &mut clients {
        client.send_raw(&frame);
        client.stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    // Without the hang-up check, some would wait for the heartbeat (a minute).
    server.wait_for("every connection gone", |m| m.connections == 0 && m.closed == 300);
}

/// Polls `done` every 10 ms for up to `limit`; whether it came true. For waits whose
/// failure must not panic on the spot (a test that has to leak a stuck server first).
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The watchdog end to end, deterministically: the shard's ticker loses its wake-up
/// ([`park_ticker`]: parked with no timer), so the shard sleeps in `io_uring_enter`
/// through its ticks, as the glommio stall leaves it (`server` module docs). Only the
/// watchdog can bring the ticker back (nothing else holds its `Waker`): it must see
/// the tick counter stand still for `STALL_TICKS` checks while the thread sleeps, wake
/// it, and count the wake; then the shard ticks and serves again. The stall's trigger
/// itself (glommio parking with runnable tasks) is left to the stress test below.
///
/// Every wait is bounded. If the shard is not rescued it can never finish a drain
/// (the drain runs on ticks), so the test leaks the server and fails instead of
/// hanging in its drop.
#[test]
fn a_shard_sleeping_through_its_ticks_is_woken_by_the_watchdog_and_serves_again() {
    let server = TestServer::start(|cfg| {
        // One shard, so the connection afterwards is served by the one that was parked.
        cfg.shards = 1;
    });
    let handle = server.handles()[0].clone();
    server.wait_for("the first ticks", |_| handle.ticks() >= 2);
    let wakes_before = server.metrics().watchdog_wakes;
    park_ticker(&handle);
    let fail = |server: TestServer, what: String| -> ! {
        // A parked shard never finishes its drain: leave the server running.
        std::mem::forget(server);
        panic!("{what}");
    };
    if !eventually(Duration::from_secs(5), ticker_parked) {
        PARK_TICKER.store(0, Ordering::Release);
        fail(
            server,
            format!("the ticker never took the park request (ticks {})", handle.ticks()),
        );
    }
    let parked_at = handle.ticks();
    // STALL_TICKS silent checks, a tick apart, then the wake: well under a second.
    let limit = Duration::from_secs(10);
    if !eventually(limit, || handle.ticks() > parked_at) {
        let state = handle.tid().and_then(super::watchdog::thread_state);
        fail(
            server,
            format!(
                "the parked shard was not woken within {limit:?}: ticks stuck at {parked_at}, thread state {state:?}, \
                 watchdog wakes {}",
                handle.watchdog_wakes()
            ),
        );
    }
    // The wake is counted, and published as wsgate_shard_watchdog_wakes_total.
    server.wait_for("the watchdog's wake to be counted", |m| m.watchdog_wakes > wakes_before);
    let mut client = Client::connect(server.addr);
    client.send_text("after the wake");
    assert_eq!(client.next_event(), Some(OwnedEvent::Text("after the wake".into())));
    server.wait_for("the upgrade after the wake", |m| m.upgrades == 1 && m.connections == 1);
}

/// Pins the calling thread, and the threads it spawns from now on, to CPU 0.
fn pin_to_cpu0() {
    // SAFETY: `set` is a plain bit set, zeroed then filled by the libc macro.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// The stall of the density runs, in seconds: shards starved of CPU (six shards, two
/// busy threads and a doorbell ringer on one core) with a 10 µs preemption timer, so
/// that glommio often finds its timer expired before it runs the shard's tasks and
/// parks the executor with both tasks runnable (see `SHARD_PREEMPT_TIMER`). Without
/// the watchdog's wake through the ticker's waker, shards stay parked for good (2-6
/// of 8 in every run while this was written); with it, every shard ticks on. Knobs for
/// longer runs: WSGATE_STALL_SECS, WSGATE_STALL_SHARDS, WSGATE_STALL_SPINNERS,
/// WSGATE_STALL_PREEMPT_US.
///
/// Ignored in the default run (`cargo test -- --ignored shards_parked` runs it): in 2
/// of 4 full-suite runs here the process then hung, the test running for minutes (a
/// shard parked again while the server drained). The rescue is not complete under this
/// artificial trigger; production removes the trigger (the preemption timer is 1 h), and
/// the 10 µs timer also leaks into servers other tests start meanwhile. The default
/// run covers the watchdog's rescue with
/// `a_shard_sleeping_through_its_ticks_is_woken_by_the_watchdog_and_serves_again`.
#[test]
#[ignore = "can hang the suite: a shard parked again while the server drains never finishes the drain, and \
            the drop waits for it; run alone with --ignored"]
fn shards_parked_with_runnable_tasks_are_woken() {
    use std::sync::atomic::{AtomicBool, Ordering};
    fn knob(name: &str, default: u64) -> u64 {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }
    let stress = Duration::from_secs(knob("WSGATE_STALL_SECS", 5));
    let shards = knob("WSGATE_STALL_SHARDS", 6) as usize;
    let spinners = knob("WSGATE_STALL_SPINNERS", 2);
    pin_to_cpu0();
    PREEMPT_TIMER.set(Some(Duration::from_micros(knob("WSGATE_STALL_PREEMPT_US", 10))));
    let server = TestServer::start(|cfg| {
        cfg.shards = shards;
        cfg.tick = Duration::from_millis(20);
    });
    PREEMPT_TIMER.set(None);
    let handles = server.server.as_ref().unwrap().handles.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..spinners {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        }));
    }
    {
        // Keeps the doorbells busy, as connection traffic does, so that the waker task
        // is often runnable when the ticker's timer fires.
        let stop = stop.clone();
        let handles = handles.clone();
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for handle in &handles {
                    handle.ring_for_test();
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }));
    }
    std::thread::sleep(stress);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    // Every shard ticks on: twice the watchdog's window past the end of the stress
    // (the watchdog notices a parked one after STALL_TICKS ticks and wakes it), within
    // a second or so; a shard still short of that after 3 s stopped ticking.
    let goal = 2 * u64::from(super::watchdog::STALL_TICKS);
    let before: Vec<u64> = handles.iter().map(|h| h.ticks()).collect();
    let ticking = |i: usize| handles[i].ticks() >= before[i] + goal;
    eventually(Duration::from_secs(3), || (0..handles.len()).all(ticking));
    let after: Vec<u64> = handles.iter().map(|h| h.ticks()).collect();
    let wakes: u64 = handles.iter().map(|h| h.watchdog_wakes()).sum();
    let frozen: Vec<usize> = (0..handles.len()).filter(|&i| !ticking(i)).collect();
    if !frozen.is_empty() {
        let states: Vec<Option<char>> = frozen
            .iter()
            .map(|&i| handles[i].tid().and_then(super::watchdog::thread_state))
            .collect();
        // Parked shards never finish a drain: leave them.
        std::mem::forget(server);
        panic!("shards {frozen:?} stopped ticking (thread states {states:?}; watchdog wakes {wakes})");
    }
    eprintln!("starved shards: ticks {after:?}, watchdog wakes {wakes}");
}

#[test]
fn shards_are_pinned_to_the_allowed_cpus_in_order() {
    use super::{allowed_cpus, cpu_for_shard};
    // A cpuset of CPUs 2, 3 and 6 (as taskset -c 2,3,6 gives): shards wrap round it.
    let allowed = [2, 3, 6];
    let placed: Vec<usize> = (0..5).map(|id| cpu_for_shard(&allowed, id)).collect();
    assert_eq!(placed, [2, 3, 6, 2, 3]);
    // This process's own mask, read for real: non-empty, ascending, and each shard lands
    // inside it.
    let own = allowed_cpus();
    assert!(!own.is_empty() && own.windows(2).all(|w| w[0] < w[1]), "{own:?}");
    for id in 0..8 {
        assert!(own.contains(&cpu_for_shard(&own, id)));
    }
}

#[test]
fn a_process_restricted_to_one_cpu_sees_only_that_cpu() {
    use super::allowed_cpus;
    let own = allowed_cpus();
    let Some(&last) = own.last() else { return };
    // Restrict a fresh thread (affinity is per thread) to the highest allowed CPU, which
    // is not CPU 0 on a machine with two or more: the mask read there is just that CPU.
    let seen = std::thread::spawn(move || {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it; the
        // call changes only this thread's affinity.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(last, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
        allowed_cpus()
    })
    .join()
    .unwrap();
    assert_eq!(seen, [last]);
}

#[test]
fn a_message_of_the_largest_size_is_echoed_whatever_the_send_queue_cap() {
    // The cap bounds the backlog behind the frame being written: a reader that keeps
    // up gets a 1 MiB message through a 4 KiB cap; one that stops reading is still
    // closed as slow once a second message queues behind it.
    let server = TestServer::start(|cfg| {
        cfg.send_queue_bytes = 4096;
        cfg.limits.max_message_bytes = 1 << 20;
        cfg.limits.max_frame_bytes = 1 << 20;
    });
    let mut client = Client::connect(server.addr);
    let big = "x".repeat(1 << 20);
    client.send_text(&big);
    assert_eq!(client.next_event(), Some(OwnedEvent::Text(big.clone())));
    assert_eq!(server.metrics().slow_consumer_closes, 0);
}
