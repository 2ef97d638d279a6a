//! End-to-end tests of permessage-deflate (RFC 7692) on real shards and sockets:
//! negotiation in the 101, compressed input inflated (bounded), output compressed for
//! the connections that agreed and plain for the others, a room message compressed once
//! per shard, and interop with Python's websockets, which offers compression by default.

use std::io::Write;

use serde_json::{Value, json};

use super::tests::{Client, OwnedEvent, TestServer, UPGRADE, python_interop, run_interop_client};
use crate::config::CompressionMode;
use crate::proto::deflate::Deflater;
use crate::proto::frame::{OpCode, encode_header};
use crate::proto::mask::apply_mask;

const AGREED: &str =
    "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n";

/// Upgrades with `extra` headers (and `?user=` when given), offering the extension as
/// Chrome does when `offer`; returns the client (told about the agreement) and the head.
fn connect(server: &TestServer, user: Option<&str>, offer: bool) -> (Client, String) {
    let mut request = UPGRADE.to_owned();
    if let Some(user) = user {
        request = request
            .replace("GET /ws ", &format!("GET /ws?user={user} "))
            .replace("Host:", "Sec-WebSocket-Protocol: wsgate.v1.json\r\nHost:");
    }
    if offer {
        request = request.replace(
            "Host:",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nHost:",
        );
    }
    let (mut client, head) = Client::handshake(server.addr, request.as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    if head.contains(AGREED) {
        client.ws.set_deflate(15);
    }
    (client, head)
}

/// Sends one masked frame with the first header byte `first` (FIN, RSV1, opcode).
fn send_frame(client: &mut Client, first: u8, payload: &[u8]) {
    let key = [1, 2, 3, 4];
    let mut out = encode_header(true, OpCode::Binary, payload.len() as u64, Some(key))
        .as_bytes()
        .to_vec();
    out[0] = first;
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key, 0);
    client.stream.write_all(&out).unwrap();
}

fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    assert!(Deflater::default().compress(payload, 15, &mut out));
    out
}

#[test]
fn echo_with_compression_inflates_input_and_compresses_output() {
    let server = TestServer::start(|cfg| {
        cfg.compression = CompressionMode::On;
        cfg.compression_min_bytes = 64;
    });
    let (mut client, head) = connect(&server, None, true);
    assert!(head.contains(AGREED), "{head}");
    // A compressed message, whole and in two fragments: echoed compressed.
    let text = "a message that compresses well, ".repeat(64);
    let packed = deflate(text.as_bytes());
    send_frame(&mut client, 0xc1, &packed);
    assert_eq!(client.next_event(), Some(OwnedEvent::Text(text.clone())));
    assert_eq!(client.compressed_in, 1);
    let (a, b) = packed.split_at(packed.len() / 3);
    send_frame(&mut client, 0x41, a);
    send_frame(&mut client, 0x80, b);
    assert_eq!(client.next_event(), Some(OwnedEvent::Text(text.clone())));
    assert_eq!(client.compressed_in, 2);
    // Below --compression-min-bytes: plain both ways.
    client.send_text("short");
    assert_eq!(client.next_event(), Some(OwnedEvent::Text("short".into())));
    assert_eq!(client.compressed_in, 2);
    // A small frame that inflates past --max-message-bytes (1 MiB): closed with 1009.
    let mut bomb = Vec::new();
    Deflater::new(flate2::Compression::best()).deflate_into(&vec![b' '; 4 << 20], 15, &mut bomb);
    assert!(bomb.len() < 8192, "{}", bomb.len());
    send_frame(&mut client, 0xc1, &bomb);
    assert_eq!(client.next_event(), Some(OwnedEvent::Close(Some(1009))));
    server.wait_for("the counters", |m| {
        m.compression.get("negotiated") == Some(&1)
            && m.compression.get("messages_in") == Some(&2)
            && m.compression.get("messages_out") == Some(&2)
            && m.protocol_errors.get("message_too_big") == Some(&1)
    });
    // A client that offers nothing gets nothing, and plain echoes.
    let (mut plain, head) = connect(&server, None, false);
    assert!(!head.contains("Sec-WebSocket-Extensions"), "{head}");
    plain.send_text(&text);
    assert_eq!(plain.next_event(), Some(OwnedEvent::Text(text)));
    assert_eq!(plain.compressed_in, 0);
}

#[test]
fn compression_off_declines_the_offer_and_rsv1_is_a_protocol_error() {
    let server = TestServer::start(|_| {});
    let (mut client, head) = connect(&server, None, true);
    assert!(!head.contains("Sec-WebSocket-Extensions"), "{head}");
    send_frame(&mut client, 0xc1, &deflate(&[b'x'; 100]));
    assert_eq!(client.next_event(), Some(OwnedEvent::Close(Some(1002))));
    // With compression on, RSV1 on a control frame is still 1002.
    let server = TestServer::start(|cfg| cfg.compression = CompressionMode::On);
    let (mut client, head) = connect(&server, None, true);
    assert!(head.contains(AGREED), "{head}");
    send_frame(&mut client, 0xc9, b"");
    assert_eq!(client.next_event(), Some(OwnedEvent::Close(Some(1002))));
    // Inflated text that is not UTF-8: 1007.
    let (mut client, _) = connect(&server, None, true);
    let bad: Vec<u8> = b"ok ".iter().copied().chain([0xff]).cycle().take(400).collect();
    send_frame(&mut client, 0xc1, &deflate(&bad));
    assert_eq!(client.next_event(), Some(OwnedEvent::Close(Some(1007))));
}

fn expect(client: &mut Client, kind: &str) -> Value {
    match client.next_event() {
        Some(OwnedEvent::Text(text)) => {
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value["type"], kind, "{value}");
            value
        }
        other => panic!("expected {kind}, got {other:?}"),
    }
}

#[test]
fn a_room_message_is_compressed_once_per_shard_for_members_that_agreed() {
    let server = TestServer::start(|cfg| {
        cfg.echo = false;
        cfg.shards = 2;
        cfg.compression = CompressionMode::On;
        cfg.compression_min_bytes = 512;
    });
    let mut members: Vec<(Client, bool)> = (0..8)
        .map(|i| {
            let offer = i % 2 == 0;
            let (mut client, head) = connect(&server, Some(&format!("m{i}")), offer);
            assert_eq!(head.contains(AGREED), offer, "{head}");
            expect(&mut client, "welcome");
            client.send_text(&json!({"type": "join", "room": "big"}).to_string());
            expect(&mut client, "joined");
            (client, offer)
        })
        .collect();
    let body = "the same long room message for everybody ".repeat(30);
    let (mut publisher, _) = connect(&server, Some("publisher"), false);
    expect(&mut publisher, "welcome");
    publisher.send_text(&json!({"type": "publish", "room": "big", "body": body, "id": 1}).to_string());
    expect(&mut publisher, "ack");
    for (client, offer) in &mut members {
        let before = client.compressed_in;
        let msg = expect(client, "room_msg");
        assert_eq!(msg["body"], body.as_str());
        assert_eq!(
            client.compressed_in - before,
            usize::from(*offer),
            "compressed only for those that agreed"
        );
    }
    // Four compressed deliveries over two shards: at most one compression per shard.
    server.wait_for("the compression counters", |m| {
        m.compression.contains_key("messages_out")
    });
    let out = server.metrics().compression.get("messages_out").copied().unwrap_or(0);
    assert!((1..=2).contains(&out), "compressed {out} times");
}

/// Python's websockets offers permessage-deflate by default: with compression on, it
/// agrees, and every check of the interop script passes over compressed frames.
#[test]
fn interoperates_with_python_websockets_compressed() {
    if !python_interop(
        "interoperates_with_python_websockets_compressed",
        "websockets.sync.client",
    ) {
        return;
    }
    let server = TestServer::start(|cfg| {
        cfg.compression = CompressionMode::On;
        cfg.compression_min_bytes = 0;
    });
    let stdout = run_interop_client([format!("ws://{}/ws", server.addr), "--compression".to_owned()]);
    assert!(stdout.contains("ok   permessage-deflate negotiated"), "{stdout}");
    server.wait_for("the compression counters", |m| {
        m.compression.contains_key("messages_out")
    });
    let m = server.metrics();
    assert!(
        m.compression.get("messages_in").copied().unwrap_or(0) >= 3,
        "{:?}",
        m.compression
    );
    // The 200 KB echo at least (short ones do not shrink and go plain).
    assert!(
        m.compression.get("messages_out").copied().unwrap_or(0) >= 1,
        "{:?}",
        m.compression
    );
}

/// The headless Chromium to drive, or `None` when the caller opted out with
/// `WSGATE_SKIP_BROWSER=1`. Missing, the test fails with the way to install it
/// (`scripts/test.sh` installs Debian's `chromium`), so a plain `cargo test` never passes
/// it silently.
fn chromium(test: &str) -> Option<&'static str> {
    if std::env::var_os("WSGATE_SKIP_BROWSER").is_some_and(|v| v == "1") {
        eprintln!("{test}: skipped (WSGATE_SKIP_BROWSER=1)");
        return None;
    }
    let found = ["chromium", "chromium-browser"].into_iter().find(|name| {
        std::process::Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    });
    Some(found.unwrap_or_else(|| {
        panic!(
            "{test} needs a headless Chromium: install it with `apt-get install -y chromium` or run \
             scripts/test.sh, which does; set WSGATE_SKIP_BROWSER=1 to skip this test"
        )
    }))
}

/// A real browser offers permessage-deflate by default: Chromium agrees with the
/// gateway, compresses what it sends, and reads our compressed echo byte for byte.
#[test]
fn chromium_negotiates_compression_and_round_trips_messages() {
    let Some(browser) = chromium("chromium_negotiates_compression_and_round_trips_messages") else {
        return;
    };
    let server = TestServer::start(|cfg| {
        cfg.compression = CompressionMode::On;
        cfg.compression_min_bytes = 0;
    });
    // The page reports to a listener of the test's own (a GET with the result in its
    // path): a browser left running is waited for on real time, whatever its timers do.
    let report = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    report.set_nonblocking(true).unwrap();
    let page = std::env::temp_dir().join(format!(
        "wsgate-deflate-{}-{}.html",
        std::process::id(),
        server.addr.port()
    ));
    std::fs::write(
        &page,
        format!(
            r#"<!doctype html><html><head><meta charset="utf-8"></head><body><script>
const report = (text) => fetch("http://{report}/" + encodeURIComponent(text), {{ mode: "no-cors" }});
const ws = new WebSocket("ws://{addr}/ws");
const big = "compressible chat text, héllo ☃ ".repeat(700);
const got = [];
ws.onopen = () => {{ ws.send(big); ws.send("hi"); }};
ws.onmessage = (e) => {{
  got.push(e.data);
  if (got.length === 2) {{
    const ok = got[0] === big && got[1] === "hi";
    report((ok ? "RESULT ok " : "RESULT fail ") + ws.extensions);
    ws.close();
  }}
}};
ws.onerror = () => report("RESULT fail socket error");
</script></body></html>"#,
            addr = server.addr,
            report = report.local_addr().unwrap(),
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(browser)
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        .arg(format!("file://{}", page.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromium starts");
    // Bounded: the browser is killed (through its handle, so by its PID) when the
    // result is in or after 60 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let result = loop {
        match report.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                let mut head = [0u8; 2048];
                let n = std::io::Read::read(&mut stream, &mut head).unwrap_or(0);
                let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
                let line = String::from_utf8_lossy(&head[..n])
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let Some(path) = line.strip_prefix("GET /").and_then(|l| l.split(' ').next()) else {
                    continue; // a favicon or preflight: not the report
                };
                break crate::proto::handshake::percent_decode(path)
                    .map(|p| p.into_owned())
                    .unwrap_or_default();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("report listener: {e}"),
        }
        if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break "no result from the page within 60 s".to_owned();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&page);
    assert_eq!(
        result,
        "RESULT ok permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    server.wait_for("Chromium's compressed messages counted", |m| {
        m.compression.get("negotiated") == Some(&1)
            && m.compression.get("messages_in").is_some_and(|&n| n >= 1)
            && m.compression.get("messages_out").is_some_and(|&n| n >= 1)
    });
}
