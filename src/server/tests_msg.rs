//! End-to-end tests of messaging on real shards and sockets: the `wsgate.v1.json`
//! protocol driven through `server::shard` into `msg::MsgShard`, across two shards (the
//! kernel spreads the clients over both, and owners are `hash(key) % 2`, so most paths
//! below cross cores; the tests check that the mesh carried traffic).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::tests::{Client, OwnedEvent, TestServer, UPGRADE};

fn messaging_server(tweak: impl FnOnce(&mut crate::config::Config)) -> TestServer {
    TestServer::start(|cfg| {
        cfg.echo = false;
        cfg.shards = 2;
        tweak(cfg);
    })
}

/// A protocol client: a WebSocket client that speaks JSON.
struct Peer {
    client: Client,
}

impl Peer {
    /// Connects as `user` (auth mode none takes `?user=`), offers the protocol and waits
    /// for `welcome`, returning it.
    fn connect(server: &TestServer, user: &str) -> (Self, Value) {
        let request = UPGRADE
            .replace("GET /ws ", &format!("GET /ws?user={user} "))
            .replace("Host:", "Sec-WebSocket-Protocol: wsgate.v1.json\r\nHost:");
        let (client, head) = Client::handshake(server.addr, request.as_bytes());
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head.contains("Sec-WebSocket-Protocol: wsgate.v1.json\r\n"), "{head}");
        let mut peer = Self { client };
        let welcome = peer.expect("welcome");
        assert_eq!(welcome["user"], user);
        (peer, welcome)
    }

    fn send(&mut self, message: Value) {
        self.client.send_text(&message.to_string());
    }

    /// The next message, parsed.
    fn next(&mut self) -> Value {
        match self.client.next_event() {
            Some(OwnedEvent::Text(text)) => serde_json::from_str(&text).expect("the server sends JSON"),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The next message, which must be of `kind`.
    fn expect(&mut self, kind: &str) -> Value {
        let message = self.next();
        assert_eq!(message["type"], kind, "{message}");
        message
    }
}

fn mesh_traffic(server: &TestServer) -> u64 {
    server.registry.snapshot().iter().map(|m| m.msg.mesh_sent).sum()
}

#[test]
fn user_to_user_across_shards_with_ack_delivery_and_receipt() {
    let server = messaging_server(|_| {});
    // Several pairs, so that senders, recipients and owners land on both shards.
    for pair in 0..6 {
        let (alice, bob) = (format!("alice{pair}"), format!("bob{pair}"));
        let (mut a, _) = Peer::connect(&server, &alice);
        let (mut b, _) = Peer::connect(&server, &bob);
        a.send(json!({"type": "send", "to": bob, "id": "m1", "body": {"text": "hi"}}));
        let ack = a.expect("ack");
        assert_eq!(
            (ack["id"].as_str(), ack["seq"].as_u64()),
            (Some("m1"), Some(1)),
            "{ack}"
        );
        let msg = b.expect("msg");
        assert_eq!(msg["from"], alice.as_str());
        assert_eq!(msg["body"], json!({"text": "hi"}));
        assert_eq!(msg["seq"], 1);
        b.send(json!({"type": "ack", "seq": 1}));
        let receipt = a.expect("receipt");
        assert_eq!(
            (receipt["by"].as_str(), receipt["seq"].as_u64()),
            (Some(bob.as_str()), Some(1))
        );
    }
    server.wait_for("cross-core traffic", |_| mesh_traffic(&server) > 0);
}

#[test]
fn every_device_of_a_user_gets_its_messages_in_order() {
    let server = messaging_server(|_| {});
    let (mut sender, _) = Peer::connect(&server, "sender");
    let mut devices: Vec<Peer> = (0..4).map(|_| Peer::connect(&server, "multi").0).collect();
    for n in 1..=20u64 {
        sender.send(json!({"type": "send", "to": "multi", "id": n, "body": n}));
    }
    for n in 1..=20u64 {
        assert_eq!(sender.expect("ack")["seq"], n);
    }
    for device in &mut devices {
        for n in 1..=20u64 {
            let msg = device.expect("msg");
            assert_eq!((msg["seq"].as_u64(), msg["body"].as_u64()), (Some(n), Some(n)), "{msg}");
        }
    }
}

#[test]
fn a_room_publish_reaches_every_member_on_every_shard_once_in_order() {
    let server = messaging_server(|_| {});
    let mut members: Vec<Peer> = (0..10).map(|i| Peer::connect(&server, &format!("m{i}")).0).collect();
    for member in &mut members {
        member.send(json!({"type": "join", "room": "lobby", "id": "j"}));
        member.expect("joined");
    }
    // Two publishers at once: every member sees one order, with no gaps.
    let (mut p1, _) = Peer::connect(&server, "p1");
    let (mut p2, _) = Peer::connect(&server, "p2");
    for n in 0..10 {
        p1.send(json!({"type": "publish", "room": "lobby", "body": format!("p1-{n}")}));
        p2.send(json!({"type": "publish", "room": "lobby", "body": format!("p2-{n}")}));
    }
    let mut orders = Vec::new();
    for member in &mut members {
        let mut order = Vec::new();
        for seq in 1..=20u64 {
            let msg = member.expect("room_msg");
            assert_eq!(msg["seq"], seq, "{msg}");
            order.push(msg["body"].as_str().unwrap().to_owned());
        }
        orders.push(order);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "every member sees the same order"
    );
    // exclude_self: the publishing member does not get its own message back.
    members[0].send(json!({"type": "publish", "room": "lobby", "body": "quiet", "exclude_self": true, "id": 7}));
    assert_eq!(members[0].expect("ack")["seq"], 21);
    assert_eq!(members[1].expect("room_msg")["body"], "quiet");
}

#[test]
fn offline_messages_wait_for_the_next_connection() {
    let server = messaging_server(|_| {});
    let (mut sender, _) = Peer::connect(&server, "early");
    for n in 1..=3u64 {
        sender.send(json!({"type": "send", "to": "late", "body": n}));
        assert_eq!(sender.expect("ack")["seq"], n);
    }
    let (mut late, welcome) = Peer::connect(&server, "late");
    assert_eq!(welcome["inbox"]["seq"], 3, "{welcome}");
    for n in 1..=3u64 {
        assert_eq!(late.expect("msg")["body"], n);
    }
    server.wait_for("offline delivery counted", |_| {
        server
            .registry
            .snapshot()
            .iter()
            .map(|m| m.msg.offline_delivered)
            .sum::<u64>()
            == 3
    });
}

#[test]
fn a_reconnecting_client_resumes_from_its_last_seq() {
    let server = messaging_server(|_| {});
    let (mut sender, _) = Peer::connect(&server, "s");
    let (mut r, welcome) = Peer::connect(&server, "r");
    let epoch = welcome["inbox"]["epoch"].clone();
    sender.send(json!({"type": "send", "to": "r", "body": 1}));
    assert_eq!(r.expect("msg")["seq"], 1);
    drop(r);
    sender.expect("ack");
    // While it is away (another device keeps it online, so nothing is queued offline).
    let (_other, _) = Peer::connect(&server, "r");
    for n in 2..=4 {
        sender.send(json!({"type": "send", "to": "r", "body": n}));
        sender.expect("ack");
    }
    let (mut back, _) = Peer::connect(&server, "r");
    back.send(json!({"type": "resume", "since": {"epoch": epoch, "seq": 1}, "id": "re"}));
    for n in 2..=4u64 {
        assert_eq!(back.expect("msg")["seq"], n);
    }
    let resumed = back.expect("resumed");
    assert_eq!(resumed["replayed"], 3, "{resumed}");
    // A position from another epoch cannot be replayed: resync.
    back.send(json!({"type": "resume", "since": {"epoch": 12345, "seq": 1}}));
    assert_eq!(back.expect("resync")["reason"], "epoch_changed");
}

#[test]
fn presence_of_users_and_rooms() {
    let server = messaging_server(|_| {});
    let (mut asker, _) = Peer::connect(&server, "asker");
    let (_d1, _) = Peer::connect(&server, "dora");
    let (_d2, _) = Peer::connect(&server, "dora");
    asker.send(json!({"type": "presence", "user": "dora", "id": 1}));
    let answer = asker.expect("presence");
    assert_eq!(
        (answer["online"].as_bool(), answer["connections"].as_u64()),
        (Some(true), Some(2)),
        "{answer}"
    );
    asker.send(json!({"type": "presence", "user": "nobody", "id": 2}));
    assert_eq!(asker.expect("presence")["online"], false);
    asker.send(json!({"type": "join", "room": "r", "presence": true}));
    asker.expect("joined");
    let (mut eve, _) = Peer::connect(&server, "eve");
    eve.send(json!({"type": "join", "room": "r"}));
    eve.expect("joined");
    // Its own join first, then eve's.
    let own = asker.expect("presence");
    assert_eq!(
        (own["event"].as_str(), own["user"].as_str()),
        (Some("join"), Some("asker")),
        "{own}"
    );
    let event = asker.expect("presence");
    assert_eq!(
        (event["event"].as_str(), event["user"].as_str()),
        (Some("join"), Some("eve")),
        "{event}"
    );
    assert_eq!(event["members"], 2, "{event}");
}

#[test]
fn garbage_and_bad_requests_get_their_answers() {
    let server = messaging_server(|_| {});
    let (mut peer, _) = Peer::connect(&server, "g");
    peer.send(json!({"type": "fly", "id": 9}));
    let error = peer.expect("error");
    assert_eq!(
        (error["code"].as_str(), error["id"].as_u64()),
        (Some("unknown_type"), Some(9))
    );
    peer.client.send_text("not json");
    assert_eq!(peer.client.next_event(), Some(OwnedEvent::Close(Some(1008))));
}

#[test]
fn a_slow_member_of_a_hot_room_does_not_slow_the_others() {
    let server = messaging_server(|cfg| cfg.send_queue_bytes = 64 * 1024);
    let (mut slow, _) = Peer::connect(&server, "slow");
    slow.send(json!({"type": "join", "room": "hot"}));
    slow.expect("joined");
    // A small receive window, so the kernel holds little of what it is sent.
    socket2::SockRef::from(&slow.client.stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    let (mut fast, _) = Peer::connect(&server, "fast");
    fast.send(json!({"type": "join", "room": "hot"}));
    fast.expect("joined");
    let (mut publisher, _) = Peer::connect(&server, "pub");
    let body = "x".repeat(60 * 1024);
    let mut worst = Duration::ZERO;
    // `slow` never reads: its queue passes 64 KiB and it is closed as a slow consumer,
    // while `fast` keeps getting every message promptly.
    for n in 1..=300u64 {
        let sent = Instant::now();
        publisher.send(json!({"type": "publish", "room": "hot", "body": body}));
        let msg = fast.expect("room_msg");
        assert_eq!(msg["seq"], n);
        worst = worst.max(sent.elapsed());
        publisher.expect("ack");
    }
    assert!(
        worst < Duration::from_millis(500),
        "worst publish-to-delivery {worst:?}"
    );
    server.wait_for("the slow member closed", |m| m.slow_consumer_closes == 1);
}

#[test]
fn a_full_offline_queue_reaches_its_user_with_the_default_limits() {
    // With the defaults, the whole offline queue (up to offline_max_bytes) goes out at
    // connect behind the welcome: it must fit what a connection may queue.
    let server = messaging_server(|_| {});
    let (mut alice, _) = Peer::connect(&server, "alice");
    let body = "y".repeat(1000);
    for i in 0..300 {
        alice.send(json!({"type": "send", "to": "offline-bob", "id": i, "body": body}));
        alice.expect("ack");
    }
    let (mut bob, welcome) = Peer::connect(&server, "offline-bob");
    let queued = welcome["inbox"]["seq"].as_u64().unwrap();
    assert_eq!(queued, 300);
    let mut got = 0;
    loop {
        let m = bob.next();
        assert_eq!(m["type"], "msg", "{m}");
        got += 1;
        if m["seq"] == 300 {
            break;
        }
    }
    assert!(got >= 200, "only {got} of the offline queue arrived");
    assert_eq!(server.metrics().slow_consumer_closes, 0);
}

/// The application-level ping (for browsers, which cannot see WebSocket pings) is
/// answered with its id by the connection's own shard: no ring, no owner.
#[test]
fn an_application_ping_is_answered_by_the_connections_own_shard() {
    let server = messaging_server(|_| {});
    // Enough users that the owners of some of them are on the other shard.
    let mut peers: Vec<Peer> = (0..6)
        .map(|i| Peer::connect(&server, &format!("pinger{i}")).0)
        .collect();
    server.wait_for_shard_time(Duration::from_millis(100));
    let (mesh_before, delivered_before) = (mesh_traffic(&server), server.metrics().msg.frames_delivered);
    for (i, peer) in peers.iter_mut().enumerate() {
        peer.send(json!({"type": "ping", "id": format!("p{i}")}));
        peer.send(json!({"type": "ping", "id": i}));
        peer.send(json!({"type": "ping"}));
        assert_eq!(peer.next(), json!({"type": "pong", "id": format!("p{i}")}));
        assert_eq!(peer.next(), json!({"type": "pong", "id": i}));
        assert_eq!(peer.next(), json!({"type": "pong"}));
    }
    server.wait_for("18 pongs counted as delivered frames", |m| {
        m.msg.frames_delivered >= delivered_before + 18
    });
    server.wait_for_shard_time(Duration::from_millis(100));
    assert_eq!(mesh_traffic(&server), mesh_before, "a ping never crosses a ring");
    // A bad id is refused like on any request; the connection stays usable.
    peers[0].send(json!({"type": "ping", "id": "x".repeat(65)}));
    assert_eq!(peers[0].expect("error")["code"], "too_large");
    peers[0].send(json!({"type": "ping", "id": "again"}));
    assert_eq!(peers[0].expect("pong")["id"], "again");
}

/// A plain GET over the listener (no upgrade), read to the end: (status line, head, body).
fn http_get(server: &TestServer, path: &str) -> (String, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("the server answers and closes");
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete head");
    let status = head.lines().next().unwrap().to_owned();
    (status, head.to_owned(), body.to_owned())
}

/// `--demo` serves the client and the demo page on the WebSocket listener; without it
/// both paths are 404 like any other, and nothing else changes either way.
#[test]
fn demo_serves_the_client_and_the_page_and_nothing_else() {
    let server = messaging_server(|cfg| cfg.demo = true);
    let (status, head, body) = http_get(&server, "/client/wsgate.js");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        head.contains("\r\nContent-Type: text/javascript; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", crate::client::CLIENT_JS.len())));
    assert_eq!(body, crate::client::CLIENT_JS);
    let (status, head, body) = http_get(&server, "/demo?token=abc");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        head.contains("\r\nContent-Type: text/html; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nContent-Security-Policy: "), "{head}");
    assert_eq!(body, crate::client::DEMO_HTML);
    for other in ["/", "/demo/", "/client/wsgate.d.ts", "/healthz"] {
        assert_eq!(http_get(&server, other).0, "HTTP/1.1 404 Not Found", "{other}");
    }
    // The WebSocket path still upgrades and speaks the protocol.
    let (mut peer, _) = Peer::connect(&server, "demo-user");
    peer.send(json!({"type": "ping", "id": 1}));
    assert_eq!(peer.expect("pong")["id"], 1);
    // Served pages are answers, not failed handshakes.
    server.wait_for("the 404s counted", |m| {
        m.handshake_failures.get("path_not_found") == Some(&4)
    });

    let server = messaging_server(|_| {});
    for path in ["/client/wsgate.js", "/demo"] {
        let (status, _, body) = http_get(&server, path);
        assert_eq!(status, "HTTP/1.1 404 Not Found", "{path}");
        assert_eq!(body, "no WebSocket endpoint at this path\n");
    }
}

/// A drain with every connection on one shard: the other shard, with none of its own,
/// still owns users, and must keep serving them until the last connection is closed.
/// Before the shards finished together, it left at once, and what the open connections
/// sent to its users got no answer (lost on a ring nobody read any more, or, once the
/// shard was gone, shed as `overloaded`) until their close came.
#[test]
fn a_shard_without_connections_serves_its_users_until_the_whole_drain_is_done() {
    use crate::msg::{KeyKind, owner_of};
    use crate::proto::close::CloseCode;

    let mut server = messaging_server(|cfg| {
        cfg.drain_window = Duration::from_secs(2);
        cfg.drain_timeout = Duration::from_secs(10);
    });
    let shard_counts =
        |server: &TestServer| -> Vec<u64> { server.registry.snapshot().iter().map(|m| m.connections).collect() };
    // Two connections on the same shard (the kernel picks; a connection that lands on
    // the other one is closed and tried again).
    let (a, _) = Peer::connect(&server, "drainer-a");
    server.wait_for("the first connection", |m| m.connections == 1);
    let home = shard_counts(&server)
        .iter()
        .position(|&n| n == 1)
        .expect("one shard holds it");
    let mut peers = vec![a];
    for attempt in 0.. {
        assert!(attempt < 64, "64 connections in a row landed on the other shard");
        let (b, _) = Peer::connect(&server, "drainer-b");
        server.wait_for("the second connection", |m| m.connections == 2);
        if shard_counts(&server)[home] == 2 {
            peers.push(b);
            break;
        }
        drop(b);
        server.wait_for("the stray connection to go", |m| m.connections == 1);
    }
    // A recipient owned by the shard that holds no connection.
    let away = (0..)
        .map(|n| format!("away-{n}"))
        .find(|u| usize::from(owner_of(KeyKind::User, u, 2)) != home);
    let away = away.expect("some user is owned by the other shard");

    let running = server.server.take().expect("running");
    let started = Instant::now();
    running.drain(CloseCode::SERVICE_RESTART);
    for (i, peer) in peers.iter_mut().enumerate() {
        peer.send(json!({"type": "send", "to": away, "id": format!("m{i}"), "body": {"n": i}}));
    }
    // Closes are spread over the 2 s window: the second of two comes after half of it, so
    // at least one connection hears its answer first. Nobody may hear `overloaded`.
    let mut acks = 0;
    for peer in &mut peers {
        match peer.client.next_event() {
            Some(OwnedEvent::Text(text)) => {
                let answer: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(answer["type"], "ack", "{answer}");
                assert_eq!(answer["to"], away.as_str(), "{answer}");
                acks += 1;
                assert_eq!(peer.client.next_event(), Some(OwnedEvent::Close(Some(1012))));
            }
            Some(OwnedEvent::Close(code)) => assert_eq!(code, Some(1012)),
            other => panic!("expected the ack or the drain's close, got {other:?}"),
        }
    }
    assert!(acks >= 1, "no connection got its message stored during the drain");
    running.join();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "the shards finish once the last connection is gone, well before the 10 s deadline: {took:?}"
    );
}
