//! End-to-end tests of permessage-deflate (RFC 7692) on real shards and sockets:
//! negotiation in the 101, compressed input inflated (bounded), output compressed for
//! the connections that agreed and plain for the others, a room message compressed once
//! per shard, and interop with Python's websockets, which offers compression by default.

use std::io::Write;

use serde_json::{Value, json};

use super::tests::{Client, OwnedEvent, TestServer, UPGRADE, python_interop};
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
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/interop_client.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(format!("ws://{}/ws", server.addr))
        .arg("--compression")
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
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
