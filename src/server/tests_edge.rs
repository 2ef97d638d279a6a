//! End-to-end tests of the edge limits (`crate::edge`) on real shards and sockets: each
//! limit triggers, answers as documented, is counted, and recovers.

use super::tests::{Client, OwnedEvent, SECRET, TestServer, UPGRADE, token};
use crate::auth::{AuthMode, Secret};
use crate::msg::UserLimitPolicy;

fn with_header(name: &str, value: &str) -> String {
    UPGRADE.replace("Host:", &format!("{name}: {value}\r\nHost:"))
}

/// The wiring of the upgrade bucket: the burst gets through, the next upgrade gets 429
/// with `Retry-After`, and it is counted. The refill over time is tested on a fake
/// clock in `edge::tests::upgrade_bucket_refills_at_its_rate_after_a_429`; here the
/// slowest rate (1/s) leaves a whole second for the four handshakes, so no token
/// comes back in between.
#[test]
fn upgrade_rate_per_address_answers_429_with_retry_after_and_is_counted() {
    let server = TestServer::start(|cfg| {
        cfg.edge.upgrade_rate_per_ip = 1;
        cfg.edge.upgrade_burst_per_ip = 3;
    });
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Client::connect(server.addr));
    }
    let (_, head) = Client::handshake(server.addr, UPGRADE.as_bytes());
    assert!(head.starts_with("HTTP/1.1 429 "), "{head}");
    assert!(head.contains("Retry-After: 1\r\n"), "{head}");
    assert!(head.contains("Connection: close"), "{head}");
    // The connections the bucket let in are open and served.
    for client in &mut open {
        client.send_text("admitted");
        assert_eq!(client.next_event(), Some(OwnedEvent::Text("admitted".into())));
    }
    server.wait_for("the rate limit counted", |m| {
        m.limit_hits.get("upgrade_rate") == Some(&1) && m.handshake_failures.get("upgrade_rate") == Some(&1)
    });
}

#[test]
fn connections_per_address_are_capped_and_given_back() {
    let server = TestServer::start(|cfg| cfg.edge.max_connections_per_ip = 2);
    let mut first = Client::connect(server.addr);
    let _second = Client::connect(server.addr);
    let (_, head) = Client::handshake(server.addr, UPGRADE.as_bytes());
    assert!(head.starts_with("HTTP/1.1 429 "), "{head}");
    // The body says why: "too many connections from this address\n".
    assert!(head.contains("Content-Length: 39\r\n"), "{head}");
    first.send_close(1000);
    assert_eq!(first.next_event(), Some(OwnedEvent::Close(Some(1000))));
    server.wait_for("the closed connection to be given back", |m| m.closed == 1);
    let (_, head) = Client::handshake(server.addr, UPGRADE.as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    server.wait_for("the cap counted", |m| {
        m.limit_hits.get("connections_per_ip") == Some(&1)
    });
}

#[test]
fn forwarded_for_counts_the_client_behind_a_trusted_proxy() {
    let server = TestServer::start(|cfg| {
        cfg.edge.max_connections_per_ip = 1;
        cfg.edge.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    });
    // Two clients behind the proxy: two addresses.
    let (_a, head) = Client::handshake(server.addr, with_header("X-Forwarded-For", "198.51.100.1").as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let (_b, head) = Client::handshake(server.addr, with_header("X-Forwarded-For", "198.51.100.2").as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // The same client again, even with a forged entry in front: over its cap.
    let forged = with_header("X-Forwarded-For", "203.0.113.77, 198.51.100.1");
    let (_, head) = Client::handshake(server.addr, forged.as_bytes());
    assert!(head.starts_with("HTTP/1.1 429 "), "{head}");

    // Without trusted proxies the header is ignored: all three share 127.0.0.1.
    let direct = TestServer::start(|cfg| cfg.edge.max_connections_per_ip = 1);
    let (_c, head) = Client::handshake(direct.addr, with_header("X-Forwarded-For", "198.51.100.1").as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let (_, head) = Client::handshake(direct.addr, with_header("X-Forwarded-For", "198.51.100.2").as_bytes());
    assert!(head.starts_with("HTTP/1.1 429 "), "{head}");
}

/// A server in messaging mode (the per-user limit is kept by each user's owner, which
/// `--echo` does not have).
fn messaging_server(tweak: impl FnOnce(&mut crate::config::Config)) -> TestServer {
    TestServer::start(|cfg| {
        cfg.echo = false;
        tweak(cfg);
    })
}

/// Upgrades with `request` (a `UPGRADE` variant) speaking the messaging protocol.
fn messaging(server: &TestServer, request: &str) -> (Client, String) {
    let request = request.replace("Host:", "Sec-WebSocket-Protocol: wsgate.v1.json\r\nHost:");
    Client::handshake(server.addr, request.as_bytes())
}

fn messaging_as(server: &TestServer, user: &str) -> Client {
    let (mut client, head) = messaging(server, &UPGRADE.replace("GET /ws ", &format!("GET /ws?user={user} ")));
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    expect_welcome(&mut client);
    client
}

/// The next message's type, or the close code.
fn next(client: &mut Client) -> Result<String, Option<u16>> {
    match client.next_event() {
        Some(OwnedEvent::Text(text)) => {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            Ok(value["type"].as_str().unwrap().to_owned())
        }
        Some(OwnedEvent::Close(code)) => Err(code),
        other => panic!("unexpected {other:?}"),
    }
}

fn expect_welcome(client: &mut Client) {
    assert_eq!(next(client), Ok("welcome".to_owned()));
}

/// A connection still served: a send to `to` is acked.
fn still_served(client: &mut Client, to: &str) {
    let send = serde_json::json!({"type": "send", "to": to, "id": "s", "body": "x"}).to_string();
    client.send_text(&send);
    loop {
        match next(client) {
            Ok(kind) if kind == "ack" => return,
            Ok(_) => {} // presence events and the like
            Err(code) => panic!("closed with {code:?} instead of served"),
        }
    }
}

#[test]
fn newest_connection_of_a_user_wins_and_the_oldest_gets_1008() {
    let server = messaging_server(|cfg| cfg.msg.max_connections_per_user = 2);
    let mut oldest = messaging_as(&server, "alice");
    let mut middle = messaging_as(&server, "alice");
    let mut bob = messaging_as(&server, "bob");
    // Anonymous connections without a user id are each their own user.
    let _anonymous: Vec<Client> = (0..3).map(|_| Client::connect(server.addr)).collect();
    let mut newest = messaging_as(&server, "alice");
    // The owner may be on the other shard, and the oldest on either: the close crosses
    // shards.
    assert_eq!(next(&mut oldest), Err(Some(1008)));
    for client in [&mut middle, &mut newest, &mut bob] {
        still_served(client, "carol");
    }
    server.wait_for("the replacement counted", |m| {
        m.limit_hits.get("user_replaced") == Some(&1)
    });
    // A fourth: the middle one is the oldest now, not the one already closed.
    let mut fourth = messaging_as(&server, "alice");
    assert_eq!(next(&mut middle), Err(Some(1008)));
    still_served(&mut newest, "carol");
    still_served(&mut fourth, "carol");
}

#[test]
fn oldest_connection_of_a_user_wins_and_the_new_one_gets_1008_after_its_101() {
    let server = messaging_server(|cfg| {
        cfg.msg.max_connections_per_user = 1;
        cfg.msg.user_limit_policy = UserLimitPolicy::Oldest;
    });
    let mut first = messaging_as(&server, "alice");
    let alice = UPGRADE.replace("GET /ws ", "GET /ws?user=alice ");
    let (mut second, head) = messaging(&server, &alice);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(next(&mut second), Err(Some(1008)), "closed, never welcomed");
    server.wait_for("the refusal counted", |m| {
        m.limit_hits.get("connections_per_user") == Some(&1) && m.closed == 1
    });
    still_served(&mut first, "bob");
    first.send_close(1000);
    while next(&mut first).is_ok() {}
    server.wait_for("alice's connection to end", |m| m.closed == 2);
    let mut third = messaging_as(&server, "alice");
    still_served(&mut third, "bob");
}

#[test]
fn a_tokens_sub_is_the_user_the_limits_count() {
    let server = messaging_server(|cfg| {
        cfg.auth.mode = AuthMode::Jwt;
        cfg.auth.hmac_secret = Some(Secret::new(SECRET));
        cfg.msg.max_connections_per_user = 1;
    });
    let now = std::time::SystemTime::now();
    let bearer = |user: &str| with_header("Authorization", &format!("Bearer {}", token(user, now)));
    let welcomed = |request: &str| {
        let (mut client, head) = messaging(&server, request);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        expect_welcome(&mut client);
        client
    };
    let mut alice = welcomed(&bearer("alice"));
    let mut carol = welcomed(&bearer("carol"));
    // A second token for alice (a `user` query parameter is ignored in jwt mode).
    let mut alice_again = welcomed(&bearer("alice").replace("GET /ws ", "GET /ws?user=carol "));
    assert_eq!(next(&mut alice), Err(Some(1008)));
    still_served(&mut carol, "bob");
    still_served(&mut alice_again, "bob");
}

#[test]
fn message_rate_closes_a_flooding_connection_with_1008_and_spares_the_others() {
    let server = TestServer::start(|cfg| {
        cfg.edge.message_rate = 20;
        cfg.edge.message_burst = 5;
    });
    let mut calm = Client::connect(server.addr);
    let mut flood = Client::connect(server.addr);
    let mut burst = Vec::new();
    for i in 0..50 {
        flood
            .ws
            .write_message(&mut burst, true, format!("{i}").as_bytes())
            .unwrap();
    }
    flood.send_raw(&burst);
    // The burst is echoed, then the close.
    for i in 0..5 {
        assert_eq!(flood.next_event(), Some(OwnedEvent::Text(format!("{i}"))));
    }
    assert_eq!(flood.next_event(), Some(OwnedEvent::Close(Some(1008))));
    // The flood spent its own budget, not the calm one's: a whole burst of the calm
    // connection still gets through. (Messages spaced at the rate are never refused:
    // `edge::tests::message_rate_spaced_at_the_rate_is_never_refused`, on a fake clock.)
    for i in 0..5 {
        calm.send_text(&format!("calm {i}"));
        assert_eq!(calm.next_event(), Some(OwnedEvent::Text(format!("calm {i}"))));
    }
    server.wait_for("the flood counted", |m| m.limit_hits.get("message_rate") == Some(&1));
}

#[test]
fn a_ping_flood_counts_toward_the_message_rate_and_is_closed_with_1008() {
    // Every ping is answered with its own pong, so pings are charged like messages.
    let server = TestServer::start(|cfg| {
        cfg.edge.message_rate = 20;
        cfg.edge.message_burst = 5;
    });
    let mut flood = Client::connect(server.addr);
    let mut burst = Vec::new();
    for i in 0..50u8 {
        crate::proto::frame::encode_frame(
            &mut burst,
            true,
            crate::proto::frame::OpCode::Ping,
            &[i],
            Some([9, 8, 7, 6]),
        );
    }
    flood.send_raw(&burst);
    // The client side answers nothing and reports only the close (pongs are not events).
    assert_eq!(flood.next_event(), Some(OwnedEvent::Close(Some(1008))));
    server.wait_for("the flood counted", |m| m.limit_hits.get("message_rate") == Some(&1));
}
