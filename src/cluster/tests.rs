//! The connection against a real `redis-server` (and, for what Redis 7 will not do, a
//! scripted fake server): pipelining, order, error replies, AUTH + SELECT, the bounded
//! outbox, Redis killed mid-stream and restarted, Redis paused (SIGSTOP), RESP2
//! fallback, pushes and a garbage reply.

use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use super::conn::{Batch, ConnConfig, Failed, Redis, Refused};
use super::resp::{self, Limits, Value};
use super::testing::RedisServer;
use super::url::RedisUrl;

/// Runs `f` on a glommio executor of its own (as a shard would) and returns its output.
fn on_shard<T, F, Fut>(f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .io_memory(256 * 1024)
        .spawn(f)
        .expect("executor")
        .join()
        .expect("executor thread")
}

/// A client for `config` with its driver spawned on the current executor.
fn client(config: ConnConfig) -> Redis {
    let (redis, driver) = Redis::new(config);
    glommio::spawn_local(driver.run()).detach();
    redis
}

/// Test timings: fast backoff so the tests do not wait for nothing.
fn config(addr: SocketAddr) -> ConnConfig {
    ConnConfig {
        connect_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_secs(2),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        ..ConnConfig::new(vec![addr])
    }
}

async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

fn one(args: &[&str]) -> Batch {
    let mut b = Batch::new();
    b.cmd(args);
    b
}

async fn run1(redis: &Redis, args: &[&str]) -> Value {
    let mut replies = redis.send(one(args)).expect("accepted").await.expect("replied");
    replies.pop().unwrap()
}

fn bulk(s: &str) -> Value {
    Value::Bulk(s.as_bytes().to_vec())
}

fn ok() -> Value {
    Value::Simple(b"OK".to_vec())
}

/// 1,000 commands in one batch are one write and one round trip, their replies in
/// order; the same 1,000 one at a time are 1,000 round trips. Both timed in one run.
#[test]
fn a_pipeline_of_1000_commands_is_one_round_trip_with_replies_in_order() {
    let server = RedisServer::start();
    let addr = server.addr();
    let (pipelined, single) = on_shard(move || async move {
        let redis = client(config(addr));
        wait_until("connected", Duration::from_secs(5), || redis.is_up()).await;
        let before = redis.stats();
        let mut batch = Batch::new();
        for _ in 0..1000 {
            batch.cmd(&["INCR", "n"]);
        }
        let t = Instant::now();
        let replies = redis.send(batch).unwrap().await.unwrap();
        let pipelined = t.elapsed();
        let want: Vec<Value> = (1..=1000).map(Value::Integer).collect();
        assert_eq!(replies, want, "replies in order");
        let after = redis.stats();
        assert_eq!(after.round_trips - before.round_trips, 1);
        assert_eq!(after.commands - before.commands, 1000);

        let t = Instant::now();
        for i in 1001..=2000 {
            assert_eq!(run1(&redis, &["INCR", "n"]).await, Value::Integer(i));
        }
        let single = t.elapsed();
        assert_eq!(redis.stats().round_trips - after.round_trips, 1000);

        // Batches sent before the driver runs again share one write, each resolved with
        // its own replies.
        let before = redis.stats().round_trips;
        let replies: Vec<_> = (0..10)
            .map(|i| redis.send(one(&["ECHO", &i.to_string()])).unwrap())
            .collect();
        for (i, r) in replies.into_iter().enumerate() {
            assert_eq!(r.await.unwrap(), [bulk(&i.to_string())]);
        }
        assert_eq!(redis.stats().round_trips - before, 1, "10 queued batches, one write");
        assert_eq!(redis.stats().errors, 0);
        redis.close();
        (pipelined, single)
    });
    println!(
        "redis: 1,000 INCR in one pipeline {:?}; 1,000 INCR one round trip each {:?} ({:.0}x)",
        pipelined,
        single,
        single.as_secs_f64() / pipelined.as_secs_f64()
    );
    assert!(pipelined * 3 < single, "pipelined {pipelined:?} vs single {single:?}");
    drop(server);
}

/// An error reply is a value in its place; the connection and the other replies go on.
#[test]
fn an_error_reply_is_a_value() {
    let server = RedisServer::start();
    let addr = server.addr();
    on_shard(move || async move {
        let redis = client(config(addr));
        wait_until("connected", Duration::from_secs(5), || redis.is_up()).await;
        let mut b = Batch::new();
        b.cmd(&["SET", "a", "1"])
            .cmd(&["LPUSH", "a", "x"])
            .cmd(&["NOSUCHCOMMAND"])
            .cmd(&["GET", "a"]);
        b.cmd(&["HSET", "h", "f", "v"])
            .cmd(&["HGETALL", "h"])
            .cmd(&["GET", "missing"]);
        let r = redis.send(b).unwrap().await.unwrap();
        assert_eq!(r[0], ok());
        assert!(r[1].as_error().unwrap().starts_with(b"WRONGTYPE"), "{:?}", r[1]);
        assert!(
            r[2].as_error().unwrap().starts_with(b"ERR unknown command"),
            "{:?}",
            r[2]
        );
        assert_eq!(r[3], bulk("1"));
        assert_eq!(r[4], Value::Integer(1));
        assert_eq!(r[5], Value::Map(vec![(bulk("f"), bulk("v"))]), "RESP3 was negotiated");
        assert_eq!(r[6], Value::Null);
        let s = redis.stats();
        assert_eq!((s.errors, s.connects, s.failed_commands), (0, 1, 0));
        assert!(redis.is_up());
        redis.close();
    });
}

/// A password and a db from the URL: HELLO 3 AUTH, then SELECT; a wrong password never
/// comes up, and its sends are refused.
#[test]
fn auth_and_select_come_from_the_url() {
    let server = RedisServer::start_with(&["--requirepass", "p@ss word"]);
    let port = server.port();
    on_shard(move || async move {
        let url = |pw: &str, db: u32| RedisUrl::parse(&format!("redis://:{pw}@127.0.0.1:{port}/{db}")).unwrap();
        let with = |u: RedisUrl| {
            let c = ConnConfig::from_url(&u, None).unwrap();
            client(ConnConfig {
                backoff_min: Duration::from_millis(10),
                backoff_max: Duration::from_millis(50),
                ..c
            })
        };
        let db3 = with(url("p%40ss%20word", 3));
        let db0 = with(url("p%40ss%20word", 0));
        let wrong = with(url("nope", 0));
        wait_until("db3 connected", Duration::from_secs(5), || db3.is_up()).await;
        wait_until("db0 connected", Duration::from_secs(5), || db0.is_up()).await;
        assert_eq!(run1(&db3, &["SET", "k", "in 3"]).await, ok());
        assert_eq!(run1(&db0, &["GET", "k"]).await, Value::Null);
        assert_eq!(run1(&db3, &["GET", "k"]).await, bulk("in 3"));
        wait_until("wrong password retried", Duration::from_secs(5), || {
            wrong.stats().connect_failures >= 3
        })
        .await;
        assert!(!wrong.is_up());
        assert_eq!(wrong.send(one(&["PING"])).err(), Some(Refused::Unavailable));
        assert_eq!(wrong.stats().connects, 0);
        for r in [db3, db0, wrong] {
            r.close();
        }
    });
    drop(server);
}

/// `rediss://`: TLS to a redis-server with a certificate made here; a server whose
/// certificate the roots do not vouch for never comes up.
#[test]
fn rediss_verifies_the_server_and_carries_commands() {
    use crate::tls::testing::{CertDir, TestCert};
    let cert = TestCert::new();
    let dir = CertDir::new(&cert);
    let other = CertDir::new(&TestCert::new());
    let tls_port = super::testing::free_port();
    let (cert_file, key_file) = (dir.cert_path(), dir.key_path());
    let (cert_file, key_file) = (cert_file.to_str().unwrap(), key_file.to_str().unwrap());
    let port_arg = tls_port.to_string();
    let server = RedisServer::start_with(&[
        "--tls-port",
        &port_arg,
        "--tls-cert-file",
        cert_file,
        "--tls-key-file",
        key_file,
        "--tls-ca-cert-file",
        cert_file,
        "--tls-auth-clients",
        "no",
    ]);
    let (trusted, untrusted) = (dir.cert_path(), other.cert_path());
    on_shard(move || async move {
        let url = RedisUrl::parse(&format!("rediss://localhost:{tls_port}")).unwrap();
        let with = |ca: &std::path::Path| {
            let c = ConnConfig::from_url(&url, Some(ca)).unwrap();
            assert!(c.tls.is_some());
            client(ConnConfig {
                backoff_min: Duration::from_millis(10),
                backoff_max: Duration::from_millis(50),
                ..c
            })
        };
        let good = with(&trusted);
        let bad = with(&untrusted);
        wait_until("TLS connected", Duration::from_secs(5), || good.is_up()).await;
        assert_eq!(run1(&good, &["SET", "k", "over tls"]).await, ok());
        assert_eq!(run1(&good, &["GET", "k"]).await, bulk("over tls"));
        wait_until("untrusted certificate retried", Duration::from_secs(5), || {
            bad.stats().connect_failures >= 2
        })
        .await;
        assert!(!bad.is_up());
        good.close();
        bad.close();
    });
    drop(server);
}

/// Replies larger than the read buffer (it grows, then shrinks back) arrive whole; a
/// reply over the decoder's bulk limit drops the connection (counted) instead of being
/// buffered, and the connection comes back.
#[test]
fn large_replies_grow_the_buffer_and_one_over_the_limit_drops_the_connection() {
    let server = RedisServer::start();
    let addr = server.addr();
    let stats = on_shard(move || async move {
        let redis = client(ConnConfig {
            limits: Limits {
                max_bulk_bytes: 3 << 20,
                ..Limits::default()
            },
            ..config(addr)
        });
        wait_until("connected", Duration::from_secs(5), || redis.is_up()).await;
        let big: String = (0..(2 << 20)).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let mut b = Batch::new();
        b.cmd(&["SET", "big", &big])
            .cmd(&["GET", "big"])
            .cmd(&["STRLEN", "big"]);
        for i in 0..500 {
            b.cmd(&["ECHO", &format!("{i:0>100}")]);
        }
        let r = redis.send(b).unwrap().await.unwrap();
        assert_eq!(r[0], ok());
        assert_eq!(r[1].as_bytes().map(|b| b == big.as_bytes()), Some(true));
        assert_eq!(r[2], Value::Integer(2 << 20));
        assert!(
            r[3..]
                .iter()
                .enumerate()
                .all(|(i, v)| *v == bulk(&format!("{i:0>100}")))
        );
        // 4 MiB is over the 3 MiB limit: refused from its header.
        assert_eq!(run1(&redis, &["APPEND", "big", &big]).await, Value::Integer(4 << 20));
        assert_eq!(
            redis.send(one(&["GET", "big"])).unwrap().await.err(),
            Some(Failed::Disconnected)
        );
        wait_until("reconnected", Duration::from_secs(5), || redis.is_up()).await;
        assert_eq!(run1(&redis, &["STRLEN", "big"]).await, Value::Integer(4 << 20));
        let stats = redis.stats();
        redis.close();
        stats
    });
    assert_eq!((stats.errors, stats.reconnects), (1, 1), "{stats:?}");
    drop(server);
}

/// The outbox is bounded: while a batch is in flight (Redis busy in DEBUG SLEEP), queued
/// commands up to the bound are accepted, the next batch is refused at once and counted,
/// and everything accepted is answered.
#[test]
fn a_full_outbox_refuses_at_once() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let addr = server.addr();
    on_shard(move || async move {
        let redis = client(ConnConfig {
            outbox_max_commands: 10,
            ..config(addr)
        });
        wait_until("connected", Duration::from_secs(5), || redis.is_up()).await;
        let busy = redis.send(one(&["DEBUG", "SLEEP", "0.3"])).unwrap();
        glommio::timer::sleep(Duration::from_millis(50)).await; // written, Redis asleep
        assert_eq!(redis.queued_commands(), 0);
        let mut accepted = Vec::new();
        for i in 0..5 {
            let mut b = Batch::new();
            b.cmd(&["SET", &format!("k{i}"), "v"]).cmd(&["GET", &format!("k{i}")]);
            accepted.push(redis.send(b).unwrap());
        }
        assert_eq!(redis.queued_commands(), 10);
        assert_eq!(redis.send(one(&["PING"])).err(), Some(Refused::Full));
        assert_eq!(redis.send(one(&["PING"])).err(), Some(Refused::Full));
        assert_eq!(redis.stats().refused_full, 2);
        assert_eq!(busy.await.unwrap(), [ok()]);
        for r in accepted {
            assert_eq!(r.await.unwrap(), [ok(), bulk("v")]);
        }
        assert_eq!(run1(&redis, &["PING"]).await, Value::Simple(b"PONG".to_vec()));
        redis.close();
    });
}

/// Redis killed with a batch in flight and more queued: the written batch fails
/// `Disconnected`, the queued one `NotSent`; while Redis is down every send is refused at
/// once (nothing queues); restarted on the same port, the connection comes back with
/// backoff and works.
#[test]
fn redis_killed_mid_stream_and_restarted_reconnects_with_backoff() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let addr = server.addr();
    let server = std::sync::Arc::new(std::sync::Mutex::new(server));
    let s = server.clone();
    let (down_for, back_after, stats) = on_shard(move || async move {
        let redis = client(config(addr));
        wait_until("connected", Duration::from_secs(5), || redis.is_up()).await;
        assert_eq!(run1(&redis, &["SET", "before", "1"]).await, ok());
        let mut b = Batch::new();
        b.cmd(&["DEBUG", "SLEEP", "2"]).cmd(&["SET", "x", "1"]);
        let in_flight = redis.send(b).unwrap();
        glommio::timer::sleep(Duration::from_millis(100)).await;
        let queued = redis.send(one(&["SET", "y", "1"])).unwrap();
        s.lock().unwrap().kill();
        let t = Instant::now();
        assert_eq!(in_flight.await.err(), Some(Failed::Disconnected));
        assert_eq!(queued.await.err(), Some(Failed::NotSent));
        assert!(!redis.is_up());
        // Down: 10,000 sends refused at once, none queued.
        for _ in 0..10_000 {
            assert_eq!(redis.send(one(&["PING"])).err(), Some(Refused::Unavailable));
        }
        assert_eq!(redis.queued_commands(), 0);
        glommio::timer::sleep(Duration::from_millis(300)).await; // a few failed attempts
        let failures_while_down = redis.stats().connect_failures;
        assert!(failures_while_down >= 2, "{failures_while_down} attempts in 300 ms");
        let down_for = t.elapsed();
        s.lock().unwrap().restart();
        let t = Instant::now();
        wait_until("reconnected", Duration::from_secs(5), || redis.is_up()).await;
        let back_after = t.elapsed();
        assert_eq!(run1(&redis, &["GET", "before"]).await, Value::Null, "a fresh server");
        assert_eq!(run1(&redis, &["SET", "after", "1"]).await, ok());
        let stats = redis.stats();
        redis.close();
        (down_for, back_after, stats)
    });
    println!("redis killed: down {down_for:?}, back {back_after:?} after the restart; {stats:?}");
    assert_eq!((stats.connects, stats.reconnects), (2, 1));
    assert_eq!(stats.refused_unavailable, 10_000);
    assert_eq!(stats.failed_commands, 3);
    assert!(stats.errors >= 1);
    // Backoff is capped at 200 ms here: the restart is noticed within about that.
    assert!(back_after < Duration::from_secs(2), "{back_after:?}");
    drop(server);
}

/// Redis paused (SIGSTOP): a written batch fails `Timeout` after `command_timeout`, the
/// connection is dropped; reconnects time out in the handshake while paused; resumed,
/// it works again.
#[test]
fn redis_paused_makes_the_command_timeout_fire() {
    let server = RedisServer::start();
    let addr = server.addr();
    let server = std::sync::Arc::new(server);
    let s = server.clone();
    let (fired_after, stats) = on_shard(move || async move {
        let redis = client(ConnConfig {
            command_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_millis(300),
            ..config(addr)
        });
        wait_until("connected", Duration::from_secs(5), || redis.is_up()).await;
        assert_eq!(run1(&redis, &["SET", "k", "v"]).await, ok());
        s.pause();
        let t = Instant::now();
        let r = redis.send(one(&["GET", "k"])).unwrap().await;
        let fired_after = t.elapsed();
        assert_eq!(r.err(), Some(Failed::Timeout));
        assert!(!redis.is_up());
        // Reconnects reach the kernel's backlog but the handshake times out.
        wait_until("handshakes time out", Duration::from_secs(5), || {
            redis.stats().connect_failures >= 2
        })
        .await;
        assert!(!redis.is_up());
        assert_eq!(redis.send(one(&["PING"])).err(), Some(Refused::Unavailable));
        s.resume();
        wait_until("reconnected", Duration::from_secs(5), || redis.is_up()).await;
        assert_eq!(run1(&redis, &["GET", "k"]).await, bulk("v"));
        let stats = redis.stats();
        redis.close();
        (fired_after, stats)
    });
    println!("redis paused: command timeout fired after {fired_after:?}; {stats:?}");
    assert!(
        fired_after >= Duration::from_millis(300) && fired_after < Duration::from_millis(1500),
        "{fired_after:?}"
    );
    assert!(
        stats.timeouts >= 3,
        "the command and at least two handshakes: {stats:?}"
    );
    assert_eq!(stats.reconnects, 1);
    drop(server);
}

/// Reads one command (an array of bulk strings) from a fake server's socket.
fn read_command(s: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> Option<Vec<String>> {
    loop {
        if let Some((v, used)) = resp::decode(buf, &Limits::default()).unwrap() {
            buf.drain(..used);
            let items = v
                .as_items()?
                .iter()
                .map(|a| String::from_utf8_lossy(a.as_bytes().unwrap()).into_owned());
            return Some(items.collect());
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A server that does not know HELLO (Redis 5): the client falls back to RESP2 and a
/// plain AUTH. A push before a reply goes to the push handler; a reply that is not RESP
/// drops the connection (counted), and the next connection, RESP3, works.
#[test]
fn resp2_fallback_pushes_and_a_garbage_reply_against_a_fake_server() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let mut seen = Vec::new();
        // First connection: no HELLO, AUTH, a push then PONG, then garbage.
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        seen.push(read_command(&mut s, &mut buf).unwrap());
        s.write_all(b"-ERR unknown command 'HELLO', with args beginning with: '3'\r\n")
            .unwrap();
        seen.push(read_command(&mut s, &mut buf).unwrap());
        s.write_all(b"+OK\r\n").unwrap();
        seen.push(read_command(&mut s, &mut buf).unwrap());
        s.write_all(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n+PONG\r\n")
            .unwrap();
        seen.push(read_command(&mut s, &mut buf).unwrap());
        s.write_all(b"?garbage\r\n").unwrap();
        // Second connection: HELLO answered with a map (RESP3).
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        seen.push(read_command(&mut s, &mut buf).unwrap());
        s.write_all(b"%1\r\n$5\r\nproto\r\n:3\r\n").unwrap();
        seen.push(read_command(&mut s, &mut buf).unwrap());
        s.write_all(b"+PONG\r\n").unwrap();
        // Wait for the client to go.
        let _ = read_command(&mut s, &mut buf);
        seen
    });
    let (pushes, stats) = on_shard(move || async move {
        let redis = client(ConnConfig {
            password: Some(crate::auth::Secret::from("pw")),
            ..config(addr)
        });
        let pushes = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let sink = pushes.clone();
        redis.set_push_handler(Box::new(move |v| sink.borrow_mut().push(v)));
        wait_until("connected", Duration::from_secs(5), || redis.is_up()).await;
        assert_eq!(run1(&redis, &["PING"]).await, Value::Simple(b"PONG".to_vec()));
        assert_eq!(
            redis.send(one(&["PING"])).unwrap().await.err(),
            Some(Failed::Disconnected)
        );
        wait_until("reconnected", Duration::from_secs(5), || redis.is_up()).await;
        assert_eq!(run1(&redis, &["PING"]).await, Value::Simple(b"PONG".to_vec()));
        let stats = redis.stats();
        redis.close();
        let pushes = pushes.borrow().clone();
        (pushes, stats)
    });
    let seen = fake.join().unwrap();
    let strs = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(seen[0], strs(&["HELLO", "3", "AUTH", "default", "pw"]));
    assert_eq!(seen[1], strs(&["AUTH", "pw"]), "RESP2 fallback: AUTH on its own");
    assert_eq!(seen[2], strs(&["PING"]));
    assert_eq!(seen[4], strs(&["HELLO", "3", "AUTH", "default", "pw"]));
    assert_eq!(pushes, [Value::Push(vec![bulk("message"), bulk("ch"), bulk("hi")])]);
    assert_eq!(
        (stats.pushes, stats.connects, stats.reconnects, stats.errors),
        (1, 2, 1, 1)
    );
}
