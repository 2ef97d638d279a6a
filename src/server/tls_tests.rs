//! End-to-end TLS tests: real shards with a plain and a TLS listener, rustls clients on
//! real sockets (and Python's `ssl` + `websockets`), certificate reloads under live
//! connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::tests::{Client, OwnedEvent, TestServer, python_interop, run_interop_client};
use crate::limits::Limits;
use crate::proto::connection::{Connection, Event, Message};
use crate::tls::testing::{BOTH, CertDir, TestCert, client_config};

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn tls_server(dir: &CertDir, tweak: impl FnOnce(&mut crate::config::Config)) -> TestServer {
    TestServer::start(|cfg| {
        cfg.tls_cert = Some(dir.cert_path());
        cfg.tls_key = Some(dir.key_path());
        cfg.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        tweak(cfg);
    })
}

fn tls_addr(server: &TestServer) -> SocketAddr {
    server.server.as_ref().unwrap().tls_addr().expect("a TLS listener")
}

/// A WebSocket client over rustls on a blocking socket.
struct TlsClient {
    stream: StreamOwned<ClientConnection, TcpStream>,
    ws: Connection,
    limits: Limits,
    buf: Vec<u8>,
}

impl TlsClient {
    /// TLS handshake, then the upgrade; panics unless the answer is 101.
    fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Self {
        Self::try_connect(addr, config).expect("TLS connection")
    }

    fn try_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<Self, String> {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.set_nodelay(true).unwrap();
        let conn = ClientConnection::new(config.clone(), "localhost".try_into().unwrap()).unwrap();
        let mut stream = StreamOwned::new(conn, tcp);
        stream.write_all(UPGRADE.as_bytes()).map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                Ok(_) => return Err("EOF in the response".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if !head.starts_with("HTTP/1.1 101 ") {
            return Err(head);
        }
        Ok(Self {
            stream,
            ws: Connection::new_client(Instant::now(), 0x77),
            limits: Limits::default(),
            buf: Vec::new(),
        })
    }

    fn send_text(&mut self, text: &str) {
        let mut out = Vec::new();
        self.ws.write_message(&mut out, true, text.as_bytes()).unwrap();
        self.stream.write_all(&out).unwrap();
    }

    fn next_event(&mut self) -> Option<OwnedEvent> {
        loop {
            if !self.buf.is_empty() {
                let (used, event) = self.ws.handle_input(Instant::now(), &self.limits, &mut self.buf);
                let owned = event.map(|e| match e {
                    Event::Message(Message::Text(t)) => OwnedEvent::Text(t.into_owned()),
                    Event::Message(Message::Binary(b)) => OwnedEvent::Binary(b.into_owned()),
                    Event::Close { code, .. } => OwnedEvent::Close(code.map(|c| c.0)),
                    Event::Error(e) => panic!("server broke the protocol: {e}"),
                    Event::Compressed { .. } => panic!("compression was not negotiated"),
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

    fn echo(&mut self, text: &str) {
        self.send_text(text);
        assert_eq!(self.next_event(), Some(OwnedEvent::Text(text.into())));
    }
}

#[test]
fn tls_and_plain_listeners_serve_side_by_side() {
    let cert = TestCert::new();
    let dir = CertDir::new(&cert);
    let server = tls_server(&dir, |_| {});
    let tls = tls_addr(&server);
    let mut held = Vec::new();
    for (i, versions) in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]]
        .into_iter()
        .enumerate()
    {
        let mut secure = TlsClient::connect(tls, &client_config(&[&cert.der], versions));
        assert_eq!(secure.stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut plain = Client::connect(server.addr);
        secure.echo(&format!("over TLS {i}"));
        plain.send_text("in the clear");
        assert_eq!(plain.next_event(), Some(OwnedEvent::Text("in the clear".into())));
        // A message bigger than one TLS record, both ways.
        let big = "z".repeat(100_000);
        secure.echo(&big);
        held.push((secure, plain));
    }
    server.wait_for("TLS handshakes by version", |m| {
        m.tls_handshakes.get("tls13") == Some(&1)
            && m.tls_handshakes.get("tls12") == Some(&1)
            && m.tls_sessions == 2
            && m.connections == 4
    });
}

#[test]
fn clean_close_over_tls_ends_with_close_notify() {
    let cert = TestCert::new();
    let dir = CertDir::new(&cert);
    let server = tls_server(&dir, |_| {});
    let mut client = TlsClient::connect(tls_addr(&server), &client_config(&[&cert.der], BOTH));
    client.echo("bye soon");
    let mut close = Vec::new();
    crate::proto::frame::encode_frame(
        &mut close,
        true,
        crate::proto::frame::OpCode::Close,
        &1000u16.to_be_bytes(),
        Some([1, 2, 3, 4]),
    );
    client.stream.write_all(&close).unwrap();
    assert_eq!(client.next_event(), Some(OwnedEvent::Close(Some(1000))));
    // rustls reports a clean end (Ok(0)) only after close_notify; a bare FIN would be
    // an UnexpectedEof error.
    let mut rest = [0u8; 16];
    assert_eq!(client.stream.read(&mut rest).unwrap(), 0);
    server.wait_for("the session to go", |m| m.tls_sessions == 0 && m.closed == 1);
}

#[test]
fn sessions_resume_over_real_sockets() {
    let cert = TestCert::new();
    let dir = CertDir::new(&cert);
    let server = tls_server(&dir, |_| {});
    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
        let config = client_config(&[&cert.der], versions);
        let mut first = TlsClient::connect(tls_addr(&server), &config);
        first.echo("first");
        assert_ne!(first.stream.conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        let mut second = TlsClient::connect(tls_addr(&server), &config);
        second.echo("second");
        assert_eq!(
            second.stream.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
    }
    server.wait_for("resumptions counted", |m| m.tls_resumed == 2);
}

#[test]
fn garbage_instead_of_a_client_hello_is_closed_and_counted() {
    let cert = TestCert::new();
    let dir = CertDir::new(&cert);
    let server = tls_server(&dir, |cfg| cfg.handshake_timeout = Duration::from_millis(300));
    // Plain HTTP to the TLS port: an alert, then the connection closes.
    let mut stream = TcpStream::connect(tls_addr(&server)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(UPGRADE.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert_eq!(answer.first(), Some(&21), "a TLS alert record: {answer:?}");
    // Silence: closed at the handshake deadline.
    let mut silent = TcpStream::connect(tls_addr(&server)).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let _ = silent.read_to_end(&mut Vec::new());
    assert!(started.elapsed() < Duration::from_secs(3));
    // A client that hangs up mid-handshake.
    let half = TcpStream::connect(tls_addr(&server)).unwrap();
    (&half).write_all(&[22, 3, 1, 0, 200, 1]).unwrap();
    drop(half);
    server.wait_for("each failure counted by reason", |m| {
        m.tls_handshake_failures.get("bad_message") == Some(&1)
            && m.tls_handshake_failures.get("timeout") == Some(&1)
            && m.tls_handshake_failures.get("eof") == Some(&1)
            && m.tls_sessions == 0
    });
    // The listener still serves real clients.
    TlsClient::connect(tls_addr(&server), &client_config(&[&cert.der], BOTH)).echo("still fine");
}

#[test]
fn reload_under_live_connections() {
    let first = TestCert::new();
    let dir = CertDir::new(&first);
    let server = tls_server(&dir, |_| {});
    let addr = tls_addr(&server);
    let tls = server.server.as_ref().unwrap().tls().unwrap().clone();
    let trusts_first = client_config(&[&first.der], BOTH);
    let mut old: Vec<TlsClient> = (0..5).map(|_| TlsClient::connect(addr, &trusts_first)).collect();
    // A bad pair (key of another certificate) is refused; the old one stays in force.
    let second = TestCert::new();
    std::fs::write(dir.key_path(), &second.key_pem).unwrap();
    assert!(tls.reload().is_err());
    TlsClient::connect(addr, &trusts_first).echo("old certificate still served");
    // A good pair: new connections get it, open ones go on.
    dir.write(&second);
    tls.reload().unwrap();
    let trusts_second = client_config(&[&second.der], BOTH);
    TlsClient::connect(addr, &trusts_second).echo("new certificate");
    let refused = TlsClient::try_connect(addr, &client_config(&[&first.der], &[&rustls::version::TLS13]));
    assert!(
        refused.is_err(),
        "a client trusting only the old certificate is refused"
    );
    for (i, client) in old.iter_mut().enumerate() {
        client.echo(&format!("opened before the reload {i}"));
    }
    server.wait_for("every session counted", |m| {
        m.tls_handshakes.values().sum::<u64>() == 7 && m.connections == 5
    });
}

/// Interoperability over TLS with clients nobody here wrote: Python's `ssl` module and
/// `websockets` (scripts/interop_client.py with `--ca`). Required like the plain interop
/// test: a missing Python or package fails it, `WSGATE_SKIP_INTEROP=1` skips it (see
/// `tests::python_interop`).
#[test]
fn interoperates_with_python_ssl_and_websockets() {
    if !python_interop(
        "interoperates_with_python_ssl_and_websockets",
        "ssl, websockets.sync.client",
    ) {
        return;
    }
    let cert = TestCert::new();
    let dir = CertDir::new(&cert);
    let server = tls_server(&dir, |_| {});
    let url = format!("wss://localhost:{}/ws", tls_addr(&server).port());
    let ca = dir.cert_path();
    let stdout = run_interop_client([url.as_ref(), std::ffi::OsStr::new("--ca"), ca.as_os_str()]);
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 8, "{stdout}");
    server.wait_for("Python's handshakes", |m| m.tls_handshakes.values().sum::<u64>() >= 2);
}

/// The slow-consumer policy over TLS: queued frames are dropped before they are
/// sealed, so the records that do go out stay in sequence and the client can still
/// decrypt the close 1008 that follows.
#[test]
fn slow_consumer_over_tls_still_gets_a_readable_close() {
    let cert = TestCert::new();
    let dir = CertDir::new(&cert);
    let server = tls_server(&dir, |cfg| {
        cfg.shards = 1;
        cfg.send_queue_bytes = 64 * 1024;
    });
    let mut slow = TlsClient::connect(tls_addr(&server), &client_config(&[&cert.der], BOTH));
    slow.stream
        .sock
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let payload = "x".repeat(16 * 1024);
    let mut out = Vec::new();
    for _ in 0..2000 {
        out.clear();
        slow.ws.write_message(&mut out, true, payload.as_bytes()).unwrap();
        if slow.stream.write_all(&out).is_err() {
            break;
        }
    }
    server.wait_for("the slow consumer to be closed", |m| m.slow_consumer_closes == 1);
    let mut last = None;
    while let Some(event) = slow.next_event() {
        let closed = matches!(event, OwnedEvent::Close(_));
        last = Some(event);
        if closed {
            break;
        }
    }
    assert_eq!(last, Some(OwnedEvent::Close(Some(1008))));
}

#[test]
fn drain_closes_tls_clients_with_1001_then_close_notify() {
    let cert = TestCert::new();
    let dir = CertDir::new(&cert);
    let mut server = tls_server(&dir, |cfg| {
        cfg.drain_window = Duration::from_millis(200);
        cfg.drain_timeout = Duration::from_secs(5);
    });
    let config = client_config(&[&cert.der], BOTH);
    let mut clients: Vec<TlsClient> = (0..5).map(|_| TlsClient::connect(tls_addr(&server), &config)).collect();
    server.wait_for("5 connections", |m| m.connections == 5);
    let running = server.server.take().unwrap();
    running.drain(crate::proto::close::CloseCode::GOING_AWAY);
    for client in &mut clients {
        assert_eq!(client.next_event(), Some(OwnedEvent::Close(Some(1001))));
        let mut rest = [0u8; 16];
        assert_eq!(client.stream.read(&mut rest).unwrap(), 0, "close_notify, then EOF");
    }
    running.join();
}

/// A handshake message spread over many records fills the read buffer: refused and
/// counted, not mistaken for an EOF and not a panic.
#[test]
fn a_handshake_message_larger_than_the_read_buffer_is_refused() {
    let cert = TestCert::new();
    let dir = CertDir::new(&cert);
    let server = tls_server(&dir, |cfg| {
        cfg.shards = 1;
        cfg.read_buffer_bytes = crate::tls::MIN_READ_BUFFER_BYTES;
    });
    let mut stream = TcpStream::connect(tls_addr(&server)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    // A ClientHello declaring 65,535 bytes, sent 1,000 bytes per record.
    let mut message = vec![1u8, 0x00, 0xff, 0xff];
    message.extend(std::iter::repeat_n(0x41u8, 0xffff));
    for chunk in message.chunks(1000) {
        let mut record = vec![22u8, 3, 1];
        record.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        record.extend_from_slice(chunk);
        if stream.write_all(&record).is_err() {
            break;
        }
    }
    let _ = stream.read_to_end(&mut Vec::new());
    server.wait_for("the refusal counted", |m| {
        m.tls_handshake_failures.values().sum::<u64>() == 1 && m.tls_sessions == 0
    });
    let failures = server.metrics().tls_handshake_failures;
    assert_eq!(failures.get("too_large"), Some(&1), "{failures:?}");
}
