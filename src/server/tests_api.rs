//! End-to-end tests of the backend API: HTTP on a real admin listener, `Command::Api`
//! into real shards, answers from the owners, and what WebSocket clients see.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::tests::{Client, OwnedEvent, TestServer, UPGRADE};
use crate::admin::{self, AdminState, ApiState};
use crate::auth::Secret;
use crate::msg::MsgLimits;

const KEY: &str = "e2e-api-key-0123456789";

/// Serves the admin endpoints, with the API reaching `server`'s shards.
pub(super) fn admin_for(server: &TestServer) -> SocketAddr {
    let shards = server.server.as_ref().unwrap().api_shards();
    let api = ApiState::new(Secret::from(KEY), Arc::new(shards), &MsgLimits::default());
    let state = AdminState::new(server.registry.clone(), 1024).with_api(api);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    admin::spawn(listener, Arc::new(state)).unwrap();
    addr
}

/// One API call: (status, JSON body).
pub(super) fn api(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (
        head[9..12].parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn connect(server: &TestServer, user: &str) -> Client {
    let request = UPGRADE
        .replace("GET /ws ", &format!("GET /ws?user={user} "))
        .replace("Host:", "Sec-WebSocket-Protocol: wsgate.v1.json\r\nHost:");
    let (client, head) = Client::handshake(server.addr, request.as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut client = client;
    assert_eq!(next(&mut client)["type"], "welcome");
    client
}

fn next(client: &mut Client) -> Value {
    match client.next_event() {
        Some(OwnedEvent::Text(text)) => serde_json::from_str(&text).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[test]
fn backend_api_publishes_sends_reports_presence_and_disconnects_on_real_shards() {
    let server = TestServer::start(|cfg| {
        cfg.echo = false;
        cfg.shards = 2;
    });
    let admin = admin_for(&server);
    let mut bob = [connect(&server, "bob"), connect(&server, "bob")];
    let mut alice = connect(&server, "alice");
    alice.send_text(&json!({"type":"join","room":"lobby"}).to_string());
    assert_eq!(next(&mut alice)["type"], "joined");

    let (status, body) = api(
        admin,
        "POST",
        "/api/publish",
        Some(json!({"room":"lobby","body":{"n":1}})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["seq"], 1);
    assert_eq!(
        next(&mut alice),
        json!({"type":"room_msg","room":"lobby","seq":1,"from":null,"body":{"n":1}})
    );

    let (status, body) = api(admin, "POST", "/api/send", Some(json!({"to":"bob","body":"hello"})));
    assert_eq!(
        (status, body["seq"].as_u64(), body["online"].as_bool()),
        (200, Some(1), Some(true)),
        "{body}"
    );
    for device in &mut bob {
        assert_eq!(next(device), json!({"type":"msg","seq":1,"from":null,"body":"hello"}));
    }

    let (_, body) = api(admin, "GET", "/api/presence/user/bob", None);
    assert_eq!(body, json!({"user":"bob","online":true,"connections":2}));
    let (_, body) = api(admin, "GET", "/api/presence/room/lobby", None);
    assert_eq!(
        body,
        json!({"room":"lobby","members":1,"connections":1,"users":["alice"]})
    );

    let (status, body) = api(admin, "POST", "/api/disconnect", Some(json!({"user":"bob"})));
    assert_eq!((status, body["closed"].as_u64()), (200, Some(2)), "{body}");
    for device in &mut bob {
        assert!(
            matches!(device.next_event(), Some(OwnedEvent::Close(Some(4000)))),
            "bob's connections are closed with 4000"
        );
    }

    // Stats come from what the shards publish each tick: wait for the closes to show.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = api(admin, "GET", "/api/stats", None);
        assert_eq!(status, 200);
        if body["connections"] == 1 && body["users_online"] == 1 {
            assert_eq!(body["rooms"], 1);
            assert_eq!(body["messages"]["published"], 1);
            assert_eq!(body["messages"]["sent"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "stats never settled: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, body) = api(admin, "GET", "/api/presence/user/bob", None);
    assert_eq!(body["connections"], 0);
}

#[test]
fn backend_api_in_echo_mode_is_unavailable() {
    let server = TestServer::start(|_| {});
    let admin = admin_for(&server);
    let (status, body) = api(admin, "POST", "/api/send", Some(json!({"to":"bob","body":1})));
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")), "{body}");
}
