//! End-to-end tests: real shards on real sockets, driven by a client built on the
//! protocol core in the client role.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Server;
use crate::config::Config;
use crate::limits::Limits;
use crate::metrics::{Registry, ShardMetrics};
use crate::proto::close::CloseCode;
use crate::proto::connection::{Connection, Event, Message};

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

pub(crate) struct TestServer {
    pub server: Option<Server>,
    pub registry: Arc<Registry>,
    pub addr: SocketAddr,
}

impl TestServer {
    pub fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 2,
            max_connections: 1000,
            echo: true,
            tick: Duration::from_millis(20),
            ..Config::default()
        };
        tweak(&mut cfg);
        let registry = Arc::new(Registry::new(cfg.shards));
        let server = Server::start(Arc::new(cfg), registry.clone()).expect("server starts");
        let addr = server.local_addr();
        Self {
            server: Some(server),
            registry,
            addr,
        }
    }

    /// Sums the shards' published metrics (published every tick).
    pub fn metrics(&self) -> ShardMetrics {
        let mut total = ShardMetrics::default();
        for shard in self.registry.snapshot() {
            total.connections += shard.connections;
            total.upgrades += shard.upgrades;
            total.slow_consumer_closes += shard.slow_consumer_closes;
            total.heartbeat_timeouts += shard.heartbeat_timeouts;
            total.handshake_timeouts += shard.handshake_timeouts;
            total.messages_in += shard.messages_in;
            total.closed += shard.closed;
            for (k, v) in shard.handshake_failures {
                *total.handshake_failures.entry(k).or_default() += v;
            }
            for (k, v) in shard.protocol_errors {
                *total.protocol_errors.entry(k).or_default() += v;
            }
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
        };
        (client, String::from_utf8_lossy(&head).into_owned())
    }

    pub fn send_text(&mut self, text: &str) {
        let mut out = Vec::new();
        self.ws.write_message(&mut out, true, text.as_bytes()).unwrap();
        self.stream.write_all(&out).unwrap();
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
                let owned = event.map(|e| match e {
                    Event::Message(Message::Text(t)) => OwnedEvent::Text(t.into_owned()),
                    Event::Message(Message::Binary(b)) => OwnedEvent::Binary(b.into_owned()),
                    Event::Close { code, .. } => OwnedEvent::Close(code.map(|c| c.0)),
                    Event::Error(e) => panic!("server broke the protocol: {e}"),
                });
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
