//! End-to-end tests of the fleet (`--redis`): several gateways (real shards and
//! sockets) sharing a real `redis-server` started on loopback (`cluster::testing`).
//! Users on different nodes talk with acks and receipts, rooms span nodes (each node
//! subscribed once), presence and offline queues are the fleet's, Redis going away is
//! answered `unavailable` and survived, and a node killed with SIGKILL (a child
//! process) leaves presence within its TTL and cleans up after itself when it returns.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::tests::TestServer;
use super::tests_crash::{Gateway, Peer, temp_dir};
use crate::cluster::Value as Resp;
use crate::cluster::testing::{RedisCluster, RedisServer, command};

/// Node TTL of the tests: a killed node leaves presence within it.
const NODE_TTL: Duration = Duration::from_secs(2);

fn node(redis: &RedisServer, id: &str) -> TestServer {
    let server = TestServer::start(|cfg| {
        cfg.echo = false;
        cfg.shards = 2;
        cfg.redis = Some(crate::auth::Secret::new(format!("redis://{}", redis.addr())));
        cfg.node_id = Some(id.to_owned());
        cfg.node_ttl = NODE_TTL;
    });
    server.wait_for("every shard's Redis connection", |m| m.cluster.up == 2);
    server
}

/// Waits until `node`'s shards are subscribed to their channels again (after Redis
/// came back, until then a message for its users finds nobody and is queued offline).
fn wait_for_subscribed(redis: &RedisServer, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for shard in 0..2 {
        let channel = format!("wsg:n:{node}/{shard}");
        loop {
            let reply = command(redis.addr(), &["PUBSUB", "NUMSUB", &channel]);
            if reply
                .as_items()
                .is_some_and(|items| items.get(1).is_some_and(|n| int(n) == 1))
            {
                break;
            }
            assert!(Instant::now() < deadline, "{channel} never subscribed again");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits until every node sees `n` live nodes.
fn wait_for_fleet(nodes: &[&TestServer], n: u64) {
    for node in nodes {
        node.wait_for("the fleet's live set", |m| m.cluster.live_nodes >= n);
    }
}

fn connect(server: &TestServer, user: &str) -> (Peer, Value) {
    Peer::connect(server.addr, user).unwrap_or_else(|| panic!("{user} could not connect"))
}

fn send(peer: &mut Peer, message: Value) {
    peer.send(&message).expect("send");
}

fn expect(peer: &mut Peer, kind: &str) -> Value {
    let message = peer
        .next()
        .unwrap_or_else(|| panic!("connection gone while waiting for {kind}"));
    assert_eq!(message["type"], kind, "{message}");
    message
}

/// The next message that is not a presence event (those interleave with room traffic).
fn expect_skipping_presence(peer: &mut Peer, kind: &str) -> Value {
    loop {
        let message = peer
            .next()
            .unwrap_or_else(|| panic!("connection gone while waiting for {kind}"));
        if message["type"] == "presence" && message.get("event").is_some() {
            continue;
        }
        assert_eq!(message["type"], kind, "{message}");
        return message;
    }
}

fn int(v: &Resp) -> i64 {
    match v {
        Resp::Integer(n) => *n,
        other => panic!("not an integer: {other:?}"),
    }
}

/// Asks `peer` for `user`'s presence until it reads `connections` (registry changes
/// travel through Redis, so a query may race the change it looks for).
fn wait_for_presence(peer: &mut Peer, user: &str, connections: u64, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        send(peer, json!({"type": "presence", "user": user, "id": 1}));
        let answer = expect(peer, "presence");
        if answer["connections"] == connections {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{user} still reads {answer} after {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn users_on_different_nodes_talk_share_rooms_presence_and_offline_queues() {
    let redis = RedisServer::start();
    let nodes = [node(&redis, "n0"), node(&redis, "n1"), node(&redis, "n2")];
    wait_for_fleet(&nodes.iter().collect::<Vec<_>>(), 3);

    // User to user across nodes: ack to the sender, the message to the recipient,
    // a receipt back when the recipient acknowledges.
    let (mut alice, _) = connect(&nodes[0], "alice");
    let (mut bob, bob_welcome) = connect(&nodes[1], "bob");
    send(
        &mut alice,
        json!({"type": "send", "to": "bob", "id": "m1", "body": {"text": "hi"}}),
    );
    let ack = expect(&mut alice, "ack");
    assert_eq!(
        (ack["id"].as_str(), ack["seq"].as_u64()),
        (Some("m1"), Some(1)),
        "{ack}"
    );
    assert_eq!(
        ack["epoch"], bob_welcome["inbox"]["epoch"],
        "one inbox epoch across the fleet"
    );
    let msg = expect(&mut bob, "msg");
    assert_eq!(
        (msg["from"].as_str(), msg["seq"].as_u64()),
        (Some("alice"), Some(1)),
        "{msg}"
    );
    assert_eq!(msg["body"]["text"], "hi");
    send(&mut bob, json!({"type": "ack", "seq": 1}));
    let receipt = expect(&mut alice, "receipt");
    assert_eq!(
        (receipt["by"].as_str(), receipt["id"].as_str()),
        (Some("bob"), Some("m1"))
    );

    // Presence of a user on another node.
    wait_for_presence(&mut alice, "bob", 1, Duration::from_secs(5));

    // A room with members on every node, and several on one: every member gets each
    // publish once, with one sequence, and Redis holds one subscription per node.
    let (mut carol, _) = connect(&nodes[2], "carol");
    let (mut bob2, _) = connect(&nodes[1], "bob2");
    let (mut bob3, _) = connect(&nodes[1], "bob3");
    for peer in [&mut alice, &mut bob, &mut carol, &mut bob2, &mut bob3] {
        send(peer, json!({"type": "join", "room": "lobby", "id": "j"}));
        expect_skipping_presence(peer, "joined");
    }
    let subscribed = command(redis.addr(), &["PUBSUB", "NUMSUB", "wsg:{r:lobby}"]);
    let counts = subscribed.as_items().expect("NUMSUB answers a list");
    assert_eq!(int(&counts[1]), 3, "one subscription per node, however many members");
    for n in 1..=3u64 {
        send(
            &mut carol,
            json!({"type": "publish", "room": "lobby", "id": n, "body": n}),
        );
        for peer in [&mut alice, &mut bob, &mut carol, &mut bob2, &mut bob3] {
            let m = expect_skipping_presence(peer, "room_msg");
            assert_eq!((m["seq"].as_u64(), m["body"].as_u64()), (Some(n), Some(n)), "{m}");
        }
        let ack = expect_skipping_presence(&mut carol, "ack");
        assert_eq!(ack["seq"], n, "{ack}");
    }
    send(&mut alice, json!({"type": "presence", "room": "lobby", "id": 2}));
    let room = expect_skipping_presence(&mut alice, "presence");
    assert_eq!(
        (room["members"].as_u64(), room["connections"].as_u64()),
        (Some(5), Some(5)),
        "{room}"
    );

    // Offline on one node, delivered on another.
    send(
        &mut alice,
        json!({"type": "send", "to": "dave", "id": "d1", "body": "while you were away"}),
    );
    let ack = expect_skipping_presence(&mut alice, "ack");
    assert_eq!(ack["seq"], 1);
    let (mut dave, welcome) = connect(&nodes[2], "dave");
    assert_eq!(welcome["inbox"]["seq"], 1, "{welcome}");
    let msg = expect(&mut dave, "msg");
    assert_eq!(
        (msg["id"].as_str(), msg["body"].as_str()),
        (Some("d1"), Some("while you were away"))
    );

    // Recovery on another node: bob comes back on n2 and resumes from before the message.
    drop(bob);
    let (mut bob, welcome) = connect(&nodes[2], "bob");
    assert_eq!(welcome["inbox"]["epoch"], bob_welcome["inbox"]["epoch"]);
    assert_eq!(welcome["inbox"]["seq"], 1);
    send(
        &mut bob,
        json!({"type": "resume", "since": {"epoch": bob_welcome["inbox"]["epoch"], "seq": 0}, "id": "r"}),
    );
    let replayed = expect(&mut bob, "msg");
    assert_eq!(replayed["id"], "m1");
    let resumed = expect(&mut bob, "resumed");
    assert_eq!(resumed["replayed"], 1, "{resumed}");

    // A connected user's position never expires; the last disconnect starts its TTL
    // (so Redis forgets users who left, as the single box forgets idle entries).
    assert_eq!(int(&command(redis.addr(), &["PTTL", "wsg:{u:carol}:i"])), -1);
    drop(carol);
    let deadline = Instant::now() + Duration::from_secs(5);
    while int(&command(redis.addr(), &["PTTL", "wsg:{u:carol}:i"])) <= 0 {
        assert!(Instant::now() < deadline, "carol's position never got a TTL");
        std::thread::sleep(Duration::from_millis(20));
    }

    // No command for idle connections: with 100 more of them, 2 s of idleness cost
    // only the liveness renewals (every node_ttl / 4 = 500 ms here, per shard).
    let idle: Vec<Peer> = (0..100)
        .map(|i| connect(&nodes[i % 3], &format!("idle{i}")).0)
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before: u64 = nodes.iter().map(|n| n.metrics().cluster.commands).sum();
    std::thread::sleep(Duration::from_secs(2));
    let commands: u64 = nodes.iter().map(|n| n.metrics().cluster.commands).sum::<u64>() - before;
    assert!(
        commands <= 3 * 2 * 8,
        "{commands} commands in 2 s with {} idle connections",
        idle.len() + 7
    );
}

#[test]
fn redis_down_paused_or_restarted_is_answered_unavailable_and_survived() {
    let mut redis = RedisServer::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    wait_for_fleet(&[&a, &b], 2);
    let (mut alice, _) = connect(&a, "alice");
    let (mut bob, _) = connect(&b, "bob");

    // Down: refused at once, connections stay.
    redis.kill();
    a.wait_for("the connection to notice", |m| m.cluster.up == 0);
    send(&mut alice, json!({"type": "send", "to": "bob", "id": "x", "body": 1}));
    let error = expect(&mut alice, "error");
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("unavailable"), Some("x")),
        "{error}"
    );
    send(
        &mut alice,
        json!({"type": "publish", "room": "r", "id": "p", "body": 1}),
    );
    assert_eq!(expect(&mut alice, "error")["code"], "unavailable");
    a.wait_for("the refusals counted", |m| m.cluster.unavailable >= 2);

    // Back, empty (no persistence here): the nodes reload their functions, subscribe
    // again and re-register their users, so bob is reachable without reconnecting.
    redis.restart();
    a.wait_for("a reconnect", |m| m.cluster.up == 2 && m.cluster.reconnects >= 2);
    b.wait_for("b reconnect", |m| m.cluster.up == 2 && m.cluster.reconnects >= 2);
    wait_for_subscribed(&redis, "b");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        send(&mut alice, json!({"type": "send", "to": "bob", "id": "y", "body": 2}));
        let answer = alice.next().expect("alice connected");
        if answer["type"] == "ack" {
            break;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        assert!(Instant::now() < deadline, "no ack after the restart: {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let msg = expect(&mut bob, "msg");
    assert_eq!(msg["id"], "y");

    // Paused past the command timeout (a partition): the request fails with
    // `unavailable` after the timeout, not never; then it heals.
    redis.pause();
    let sent = Instant::now();
    send(&mut alice, json!({"type": "send", "to": "bob", "id": "z", "body": 3}));
    // A ping is answered by alice's own shard, never through Redis: its pong overtakes
    // the send that waits on the paused Redis.
    send(&mut alice, json!({"type": "ping", "id": "alive"}));
    assert_eq!(expect(&mut alice, "pong")["id"], "alive");
    let error = expect(&mut alice, "error");
    assert_eq!(error["code"], "unavailable", "{error}");
    assert!(
        sent.elapsed() < Duration::from_secs(6),
        "answered after {:?}",
        sent.elapsed()
    );
    // Longer than the node TTL: when Redis wakes, every node's liveness has run out on
    // its clock; the nodes renew within a second and nothing is lost.
    std::thread::sleep(NODE_TTL.saturating_sub(sent.elapsed()) + Duration::from_millis(500));
    redis.resume();
    a.wait_for("a reconnect after the pause", |m| m.cluster.up == 2);
    b.wait_for("b reconnect after the pause", |m| m.cluster.up == 2);
    wait_for_subscribed(&redis, "b");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        send(&mut alice, json!({"type": "send", "to": "bob", "id": "w", "body": 4}));
        let answer = alice.next().expect("alice connected");
        if answer["type"] == "ack" {
            break;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        assert!(Instant::now() < deadline, "no ack after the pause");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The paused send may or may not have run (a timeout says so); "w" arrives.
    loop {
        let msg = expect(&mut bob, "msg");
        if msg["id"] == "w" {
            break;
        }
    }
    wait_for_fleet(&[&a, &b], 2);
    wait_for_presence(&mut alice, "bob", 1, Duration::from_secs(5));
}

#[test]
fn a_killed_node_leaves_presence_within_its_ttl_and_cleans_up_when_it_returns() {
    let redis = RedisServer::start();
    let a = node(&redis, "a");
    let url = format!("--redis=redis://{}", redis.addr());
    let ttl = format!("--node-ttl={}ms", NODE_TTL.as_millis());
    let dir = temp_dir("cluster-node");
    let flags = [url.as_str(), "--node-id=killed", ttl.as_str()];
    let child = Gateway::start_with(&dir, &flags);
    a.wait_for("the child in the live set", |m| m.cluster.live_nodes >= 2);
    let (mut alice, _) = connect(&a, "alice");
    let (mut bob, _) = Peer::connect(child.addr, "bob").expect("bob on the child");
    wait_for_presence(&mut alice, "bob", 1, Duration::from_secs(5));
    // Across two processes: ack, message, receipt.
    send(
        &mut alice,
        json!({"type": "send", "to": "bob", "id": "x", "body": "across"}),
    );
    assert_eq!(expect(&mut alice, "ack")["seq"], 1);
    assert_eq!(expect(&mut bob, "msg")["body"], "across");
    send(&mut bob, json!({"type": "ack", "seq": 1}));
    assert_eq!(expect(&mut alice, "receipt")["by"], "bob");

    child.signal(libc::SIGKILL);
    let _ = child.wait(Duration::from_secs(10));
    let gone = wait_for_presence(&mut alice, "bob", 0, NODE_TTL + Duration::from_secs(5));
    eprintln!("bob left presence {gone:?} after the SIGKILL (node TTL {NODE_TTL:?})");

    // A message for bob now finds nobody listening on the dead node's channel: queued.
    send(
        &mut alice,
        json!({"type": "send", "to": "bob", "id": "o", "body": "queued"}),
    );
    expect(&mut alice, "ack");
    let left = command(redis.addr(), &["HLEN", "wsg:{u:bob}:c"]);
    assert_eq!(int(&left), 1, "the dead node's registry entry is still there");

    // The node comes back under the same id: it removes what its previous life left.
    let child = Gateway::start_with(&dir, &flags);
    let deadline = Instant::now() + Duration::from_secs(10);
    while int(&command(redis.addr(), &["HLEN", "wsg:{u:bob}:c"])) != 0 {
        assert!(Instant::now() < deadline, "the restarted node did not clean up");
        std::thread::sleep(Duration::from_millis(50));
    }
    while child.metric("wsgate_cluster_cleaned_total") < 1.0 {
        assert!(Instant::now() < deadline, "the clean-up was not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    // And bob, reconnecting anywhere, gets what was queued.
    let (mut bob, welcome) = Peer::connect(child.addr, "bob").expect("bob again");
    assert_eq!(welcome["inbox"]["seq"], 2);
    assert_eq!(expect(&mut bob, "msg")["body"], "queued");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_acked_message_survives_a_sigkill_of_redis_with_appendfsync_always() {
    // The durability an ack promises with --redis is Redis's: with `appendonly yes` and
    // `appendfsync always`, the function that sequenced and stored the message is in
    // the AOF on disk before its reply, so before the sender's ack.
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let a = node(&redis, "a");
    let (mut alice, _) = connect(&a, "alice");
    for n in 1..=20u64 {
        send(&mut alice, json!({"type": "send", "to": "carol", "id": n, "body": n}));
        assert_eq!(expect(&mut alice, "ack")["seq"], n);
    }
    redis.kill();
    redis.restart();
    a.wait_for("the reconnect", |m| m.cluster.up == 2 && m.cluster.reconnects >= 2);
    let (mut carol, welcome) = connect(&a, "carol");
    assert_eq!(welcome["inbox"]["seq"], 20, "{welcome}");
    for n in 1..=20u64 {
        let msg = expect(&mut carol, "msg");
        assert_eq!((msg["seq"].as_u64(), msg["body"].as_u64()), (Some(n), Some(n)), "{msg}");
    }
}

/// `args` on whichever master of `cluster` holds its key (the others answer MOVED).
fn on_owner(cluster: &RedisCluster, args: &[&str]) -> Resp {
    for server in &cluster.servers {
        let reply = command(server.addr(), args);
        if !reply.as_error().is_some_and(|e| e.starts_with(b"MOVED")) {
            return reply;
        }
    }
    panic!("no master holds {args:?}");
}

#[test]
fn a_fleet_on_a_three_master_redis_cluster() {
    let cluster = RedisCluster::start(3);
    let seed = &cluster.servers[0];
    let nodes = [node(seed, "c0"), node(seed, "c1"), node(seed, "c2")];
    wait_for_fleet(&nodes.iter().collect::<Vec<_>>(), 3);

    // Users whose keys land on every master talk across nodes, with receipts.
    let users: Vec<String> = (0..12).map(|i| format!("u{i}")).collect();
    let mut peers: Vec<Peer> = users
        .iter()
        .enumerate()
        .map(|(i, u)| connect(&nodes[i % 3], u).0)
        .collect();
    for i in 0..users.len() {
        let to = &users[(i + 1) % users.len()];
        send(&mut peers[i], json!({"type": "send", "to": to, "id": i, "body": i}));
        assert_eq!(expect(&mut peers[i], "ack")["seq"], 1);
        let j = (i + 1) % users.len();
        let msg = expect(&mut peers[j], "msg");
        assert_eq!(msg["body"], i, "{msg}");
        send(&mut peers[j], json!({"type": "ack", "seq": 1}));
        let receipt = expect(&mut peers[i], "receipt");
        assert_eq!(receipt["by"], to.as_str());
    }
    for server in &cluster.servers {
        let keys = int(&command(server.addr(), &["DBSIZE"]));
        assert!(keys > 0, "every master holds some of the keys");
    }

    // A room with members on every node.
    for peer in &mut peers[..6] {
        send(peer, json!({"type": "join", "room": "hall", "id": "j"}));
        expect_skipping_presence(peer, "joined");
    }
    send(
        &mut peers[0],
        json!({"type": "publish", "room": "hall", "id": "p", "body": "all"}),
    );
    // On a cluster the ack (from the room's master) and the message (a publish that
    // travels the cluster bus to the subscribing connection) race.
    let mut first = peers[0].next().expect("publisher connected");
    while first["type"] == "presence" {
        first = peers[0].next().expect("publisher connected");
    }
    if first["type"] == "ack" {
        let m = expect_skipping_presence(&mut peers[0], "room_msg");
        assert_eq!(m["seq"], 1);
    } else {
        assert_eq!(first["type"], "room_msg", "{first}");
        expect_skipping_presence(&mut peers[0], "ack");
    }
    for peer in &mut peers[1..6] {
        let m = expect_skipping_presence(peer, "room_msg");
        assert_eq!((m["seq"].as_u64(), m["body"].as_str()), (Some(1), Some("all")), "{m}");
    }

    // Presence across nodes, and offline on one node delivered on another.
    wait_for_presence(&mut peers[0], "u1", 1, Duration::from_secs(5));
    send(
        &mut peers[0],
        json!({"type": "send", "to": "nobody", "id": "o", "body": "later"}),
    );
    expect_skipping_presence(&mut peers[0], "ack");
    let (mut late, welcome) = connect(&nodes[2], "nobody");
    assert_eq!(welcome["inbox"]["seq"], 1);
    assert_eq!(expect(&mut late, "msg")["body"], "later");

    // A registry entry of a dead node (a node killed without a drain): the send finds no
    // live entry, so the message is queued from the history.
    assert_eq!(
        int(&on_owner(&cluster, &["HSET", "wsg:{u:ghosted}:c", "dead/0", "1"])),
        1
    );
    send(
        &mut peers[1],
        json!({"type": "send", "to": "ghosted", "id": "g", "body": "kept"}),
    );
    expect_skipping_presence(&mut peers[1], "ack");
    let (mut ghosted, welcome) = connect(&nodes[0], "ghosted");
    assert_eq!(welcome["inbox"]["seq"], 1);
    assert_eq!(expect(&mut ghosted, "msg")["body"], "kept");

    for node in &nodes {
        assert_eq!(
            node.metrics().cluster.error_replies,
            0,
            "no MOVED or other error replies"
        );
    }
}

#[test]
fn a_fleet_over_rediss() {
    use crate::tls::testing::{CertDir, TestCert};
    let cert = TestCert::new();
    let dir = CertDir::new(&cert);
    let tls_port = crate::cluster::testing::free_port();
    let (cert_file, key_file) = (dir.cert_path(), dir.key_path());
    let port_arg = tls_port.to_string();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &port_arg,
        "--tls-cert-file",
        cert_file.to_str().unwrap(),
        "--tls-key-file",
        key_file.to_str().unwrap(),
        "--tls-ca-cert-file",
        cert_file.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    let start = |id: &str| {
        let server = TestServer::start(|cfg| {
            cfg.echo = false;
            cfg.shards = 2;
            cfg.redis = Some(crate::auth::Secret::new(format!("rediss://localhost:{tls_port}")));
            cfg.redis_ca = Some(cert_file.clone());
            cfg.node_id = Some(id.to_owned());
            cfg.node_ttl = NODE_TTL;
        });
        server.wait_for("every shard's Redis connection over TLS", |m| m.cluster.up == 2);
        server
    };
    let (a, b) = (start("ta"), start("tb"));
    wait_for_fleet(&[&a, &b], 2);
    let (mut alice, _) = connect(&a, "alice");
    let (mut bob, _) = connect(&b, "bob");
    send(
        &mut alice,
        json!({"type": "send", "to": "bob", "id": 1, "body": "sealed"}),
    );
    expect(&mut alice, "ack");
    assert_eq!(expect(&mut bob, "msg")["body"], "sealed");
    drop(redis);
}

#[test]
fn a_node_started_while_redis_is_down_serves_and_joins_when_it_comes_up() {
    let mut redis = RedisServer::start();
    redis.kill();
    let server = TestServer::start(|cfg| {
        cfg.echo = false;
        cfg.shards = 2;
        cfg.redis = Some(crate::auth::Secret::new(format!("redis://{}", redis.addr())));
        cfg.node_id = Some("early".to_owned());
    });
    // No welcome without Redis (no inbox position to give): closed with 1013, try again
    // later.
    let refused = super::tests::Client::handshake(
        server.addr,
        super::tests::UPGRADE
            .replace("GET /ws ", "GET /ws?user=alice ")
            .replace("Host:", "Sec-WebSocket-Protocol: wsgate.v1.json\r\nHost:")
            .as_bytes(),
    );
    let (mut client, head) = refused;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    match client.next_event() {
        Some(super::tests::OwnedEvent::Close(code)) => assert_eq!(code, Some(1013)),
        other => panic!("expected close 1013, got {other:?}"),
    }
    server.wait_for("the refusal counted", |m| m.cluster.unavailable >= 1);
    redis.restart();
    server.wait_for("the connection", |m| m.cluster.up == 2);
    let (mut alice, _) = connect(&server, "alice");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        send(&mut alice, json!({"type": "send", "to": "bob", "id": 2, "body": 2}));
        let answer = alice.next().expect("alice connected");
        if answer["type"] == "ack" {
            break;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
        assert!(Instant::now() < deadline, "no ack once Redis is up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_backend_api_of_one_node_reaches_users_on_another() {
    use super::tests_api::{admin_for, api};
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "api-a"), node(&redis, "api-b"));
    wait_for_fleet(&[&a, &b], 2);
    let admin_a = admin_for(&a);
    let (mut bob1, _) = connect(&b, "bob");
    let (mut bob2, _) = connect(&b, "bob");
    // Send and presence through node a's API, for a user on node b.
    let (status, sent) = api(
        admin_a,
        "POST",
        "/api/send",
        Some(json!({"to": "bob", "body": "from the backend"})),
    );
    assert_eq!((status, sent["online"].as_bool()), (200, Some(true)), "{sent}");
    for bob in [&mut bob1, &mut bob2] {
        let msg = expect(bob, "msg");
        assert_eq!(
            (msg["from"].clone(), msg["body"].as_str()),
            (Value::Null, Some("from the backend"))
        );
    }
    let (status, presence) = api(admin_a, "GET", "/api/presence/user/bob", None);
    assert_eq!((status, presence["connections"].as_u64()), (200, Some(2)), "{presence}");
    // Disconnect through node a: bob's connections on node b are closed with 4000.
    let (status, answer) = api(admin_a, "POST", "/api/disconnect", Some(json!({"user": "bob"})));
    assert_eq!(status, 200, "{answer}");
    for bob in [&mut bob1, &mut bob2] {
        assert!(bob.next().is_none(), "closed");
    }
    b.wait_for("the remote disconnect", |m| m.msg.api_disconnects == 2);
}

#[test]
fn a_large_room_gets_member_counts_across_nodes() {
    let redis = RedisServer::start();
    let start = |id: &str| {
        let server = TestServer::start(|cfg| {
            cfg.echo = false;
            cfg.shards = 2;
            cfg.redis = Some(crate::auth::Secret::new(format!("redis://{}", redis.addr())));
            cfg.node_id = Some(id.to_owned());
            cfg.msg.presence_event_max_members = 2;
        });
        server.wait_for("Redis", |m| m.cluster.up == 2);
        server
    };
    let (a, b) = (start("big-a"), start("big-b"));
    wait_for_fleet(&[&a, &b], 2);
    let (mut watcher, _) = connect(&a, "w");
    send(
        &mut watcher,
        json!({"type": "join", "room": "big", "presence": true, "id": "j"}),
    );
    expect_skipping_presence(&mut watcher, "joined");
    let mut others = Vec::new();
    for i in 0..3 {
        let (mut p, _) = connect(&b, &format!("m{i}"));
        send(&mut p, json!({"type": "join", "room": "big", "id": "j"}));
        expect_skipping_presence(&mut p, "joined");
        others.push(p);
    }
    // Past 2 members the watcher hears counts (from the node where they joined), not
    // per-member events; the last count is the fleet's 4.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let event = expect(&mut watcher, "presence");
        if event["event"] == "count" && event["members"] == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "no count of 4: {event}");
    }
}

#[test]
fn a_drained_node_takes_its_users_out_of_the_registry_and_leaves_at_once() {
    let redis = RedisServer::start();
    let url = format!("--redis=redis://{}", redis.addr());
    let dir = temp_dir("cluster-drain");
    let child = Gateway::start_with(&dir, &[url.as_str(), "--node-id=drained", "--node-ttl=60s"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.metric("wsgate_redis_up") < 2.0 {
        assert!(Instant::now() < deadline, "the child never reached Redis");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_bob, _) = Peer::connect(child.addr, "bob").expect("bob on the child");
    let deadline = Instant::now() + Duration::from_secs(5);
    while int(&command(redis.addr(), &["HLEN", "wsg:{u:bob}:c"])) != 1 {
        assert!(Instant::now() < deadline, "bob never registered");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.signal(libc::SIGTERM);
    assert_eq!(child.wait(Duration::from_secs(20)), Some(0));
    // Right after the exit (what it wrote last may still wait in Redis's input for a
    // moment), not a node TTL (60 s) later.
    let deadline = Instant::now() + Duration::from_secs(2);
    while int(&command(redis.addr(), &["HLEN", "wsg:{u:bob}:c"])) != 0
        || command(redis.addr(), &["ZSCORE", "wsg:nodes", "drained"]) != Resp::Null
    {
        assert!(Instant::now() < deadline, "the drained node left its entries behind");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
