//! End-to-end tests of the bench against a real in-process server, and of its option
//! parsing. Sizes are small: the test binary shares two cores with other tests.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::density::{self, DensityArgs};
use super::echo::{self, EchoArgs};
use super::fanout::{self, DirectArgs, FanoutArgs};
use super::host::{Preflight, check_fit};
use super::sources::SourceIps;
use super::url::{WsUrl, WsUrls};
use super::{BenchError, CommonArgs, Latency, Rate};
use crate::server::tests::TestServer;

fn common(addr: SocketAddr, sources: Option<&str>) -> CommonArgs {
    CommonArgs {
        url: WsUrls::one(WsUrl::parse(&format!("ws://{addr}/ws")).unwrap()),
        token: None,
        source_ips: sources.map(|s| SourceIps::parse(s).unwrap()),
        workers: Some(2),
        rate: Rate::parse("2000/s").unwrap(),
        connect_timeout: Duration::from_secs(5),
        close_timeout: Duration::from_secs(3),
        json: false,
        ca: None,
        tls_insecure: false,
        tls_resume: false,
        compression: false,
    }
}

/// A server with a TLS listener and a certificate for localhost (kept in `CertDir`).
fn tls_server() -> (TestServer, crate::tls::testing::CertDir, SocketAddr) {
    let cert = crate::tls::testing::TestCert::new();
    let dir = crate::tls::testing::CertDir::new(&cert);
    let server = TestServer::start(|cfg| {
        cfg.echo = true;
        cfg.tls_cert = Some(dir.cert_path());
        cfg.tls_key = Some(dir.key_path());
        cfg.tls_listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let addr = server.server.as_ref().unwrap().tls_addr().unwrap();
    (server, dir, addr)
}

#[test]
fn density_and_echo_over_wss() {
    let (server, dir, addr) = tls_server();
    let mut args = density_args(addr, 100, None);
    args.common.url = WsUrls::parse(&format!("wss://localhost:{}/ws", addr.port())).unwrap();
    args.common.ca = Some(dir.cert_path());
    let report = density::run(&args, &AtomicBool::new(false)).unwrap();
    assert_eq!(report.established, 100, "{report:#?}");
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert_eq!(report.closed_clean, 100, "{:?}", report.close_failures);
    // Insecure trust with resumption: the server counts resumed handshakes.
    args.common.ca = None;
    args.common.tls_insecure = true;
    args.common.tls_resume = true;
    args.common.url = WsUrls::parse(&format!("wss://127.0.0.1:{}/ws", addr.port())).unwrap();
    let report = density::run(&args, &AtomicBool::new(false)).unwrap();
    assert_eq!(report.established, 100, "{report:#?}");
    server.wait_for("resumed handshakes", |m| {
        m.tls_resumed > 0 && m.tls_handshakes.values().sum::<u64>() == 200
    });
    // Echo of messages larger than a TLS record.
    let mut common = args.common.clone();
    common.tls_resume = false;
    let echo = EchoArgs {
        connections: 2,
        size: 40_000,
        in_flight: 2,
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(100),
        binary: true,
        common,
    };
    let report = echo::run(&echo, &AtomicBool::new(false)).unwrap();
    assert!(report.messages > 0 && report.mismatches == 0, "{report:#?}");
    assert!(report.success(), "{report:#?}");
    // No trust given: a usage error.
    args.common.tls_insecure = false;
    assert!(matches!(
        density::run(&args, &AtomicBool::new(false)),
        Err(BenchError::Usage(_))
    ));
}

fn density_args(addr: SocketAddr, connections: u64, sources: Option<&str>) -> DensityArgs {
    DensityArgs {
        connections,
        hold: Duration::from_millis(300),
        server_pid: None,
        admin: None,
        user_prefix: None,
        token_secret_file: None,
        token_file: None,
        warmup: 0,
        common: common(addr, sources),
    }
}

fn sane(latency: Option<Latency>, count: u64) {
    let l = latency.expect("latency recorded");
    assert_eq!(l.count, count);
    assert!(l.p50_us > 0.0, "{l:?}");
    assert!(
        l.p50_us <= l.p99_us && l.p99_us <= l.p999_us && l.p999_us <= l.max_us,
        "{l:?}"
    );
    assert!(l.max_us < 5_000_000.0, "{l:?}");
}

#[test]
fn density_holds_200_connections_over_two_source_ips_and_closes_them_cleanly() {
    let server = TestServer::start(|cfg| cfg.echo = true);
    let mut args = density_args(server.addr, 200, Some("127.0.0.2-127.0.0.3"));
    args.server_pid = Some(std::process::id());
    let report = density::run(&args, &AtomicBool::new(false)).unwrap();
    assert_eq!(report.established, 200, "{report:#?}");
    assert_eq!(report.attempted, 200);
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert_eq!(report.aborted, 0);
    assert_eq!(report.open_at_end_of_hold, 200);
    assert!(report.dropped.is_empty(), "{:?}", report.dropped);
    assert_eq!(report.closed_clean, 200, "{:?}", report.close_failures);
    assert!(report.close_failures.is_empty());
    assert!(report.protocol_errors.is_empty());
    sane(report.handshake_latency, 200);
    assert!(report.handshakes_per_sec > 0.0);
    assert!(
        report.time_to_all_secs.is_some_and(|s| s > 0.0 && s < 5.0),
        "{report:#?}"
    );
    assert_eq!(report.source_addresses, 2);
    assert_eq!(report.memory.connections, 200);
    assert!(report.memory.server_rss_after.is_some());
    assert!(report.memory.server_anon_after.is_some());
    assert!(report.memory.kernel_figures_cover_both_ends);
    assert!(report.success());
    server.wait_for("every connection closed", |m| m.upgrades == 200 && m.connections == 0);
    // The JSON report is one object with the headline figures.
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["mode"], "density");
    assert_eq!(json["established"], 200);
    assert!(json["handshake_latency"]["p999_us"].as_f64().is_some());
}

#[test]
fn density_counts_failures_by_reason() {
    // Two connections fit; the rest are refused with 503.
    let server = TestServer::start(|cfg| {
        cfg.shards = 1;
        cfg.max_connections = 2;
    });
    let report = density::run(&density_args(server.addr, 5, None), &AtomicBool::new(false)).unwrap();
    assert_eq!(report.established, 2, "{report:#?}");
    assert_eq!(report.failures.get("status_503"), Some(&3), "{:?}", report.failures);
    assert_eq!(report.closed_clean, 2);
    assert!(!report.success());
    // Nobody listening: refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let report = density::run(&density_args(closed, 3, None), &AtomicBool::new(false)).unwrap();
    assert_eq!(report.established, 0);
    assert_eq!(
        report.failures.get("connect_refused"),
        Some(&3),
        "{:?}",
        report.failures
    );
    assert!(report.time_to_all_secs.is_none());
    // A source address this host does not have.
    let report = density::run(
        &density_args(server.addr, 2, Some("192.0.2.1")),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(
        report.failures.get("source_ip_not_local"),
        Some(&2),
        "{:?}",
        report.failures
    );
}

#[test]
fn density_stops_early_when_interrupted() {
    let server = TestServer::start(|_| {});
    let mut args = density_args(server.addr, 10, None);
    args.hold = Duration::from_secs(600);
    let report = density::run(&args, &AtomicBool::new(true)).unwrap();
    assert!(report.interrupted);
    assert!(report.held_secs < 1.0, "{report:#?}");
    assert_eq!(report.established + report.aborted + report.failed, 10, "{report:#?}");
    assert!(!report.success());
}

#[test]
fn echo_measures_round_trips_and_verifies_payloads() {
    let server = TestServer::start(|cfg| cfg.echo = true);
    let args = EchoArgs {
        connections: 4,
        size: 32,
        in_flight: 2,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        binary: false,
        common: common(server.addr, None),
    };
    let report = echo::run(&args, &AtomicBool::new(false)).unwrap();
    assert_eq!(report.established, 4, "{report:#?}");
    assert!(report.failures.is_empty());
    assert!(report.messages > 0, "{report:#?}");
    assert_eq!(report.mismatches, 0);
    assert_eq!(report.unanswered, 0);
    assert_eq!(report.sent, report.received);
    assert!(report.messages <= report.received);
    assert!((report.measured_secs - 1.0).abs() < 1e-6);
    assert!(report.messages_per_sec > 0.0);
    sane(report.rtt, report.messages);
    assert_eq!(report.closed_clean, 4, "{:?}", report.close_failures);
    assert!(report.success(), "{report:#?}");
}

/// A server with permessage-deflate on for messages of 64 bytes or more, echoing or
/// messaging.
fn compressing_server(echo: bool) -> TestServer {
    TestServer::start(|cfg| {
        cfg.echo = echo;
        cfg.compression = crate::config::CompressionMode::On;
        cfg.compression_min_bytes = 64;
    })
}

#[test]
fn compression_is_offered_agreed_and_inflated() {
    let server = compressing_server(true);
    // Idle: every connection agrees, nothing arrives.
    let mut args = density_args(server.addr, 20, None);
    args.common.compression = true;
    let report = density::run(&args, &AtomicBool::new(false)).unwrap();
    assert!(report.success(), "{report:#?}");
    assert_eq!((report.compression_agreed, report.compressed_messages), (20, 0));
    // Echo above the minimum: the echoes come back compressed and still match.
    let mut common = common(server.addr, None);
    common.compression = true;
    let echo = EchoArgs {
        connections: 2,
        size: 2000,
        in_flight: 2,
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(100),
        binary: false,
        common,
    };
    let report = echo::run(&echo, &AtomicBool::new(false)).unwrap();
    assert!(report.success(), "{report:#?}");
    assert_eq!(report.compression_agreed, 2);
    assert_eq!(report.compressed_messages, report.received, "{report:#?}");
    assert!(report.protocol_errors.is_empty(), "{report:#?}");
    // Without the flag: no offer, no agreement, plain echoes.
    let mut plain = echo.clone();
    plain.common.compression = false;
    let report = echo::run(&plain, &AtomicBool::new(false)).unwrap();
    assert!(report.success(), "{report:#?}");
    assert_eq!((report.compression_agreed, report.compressed_messages), (0, 0));
}

#[test]
fn fanout_inflates_compressed_room_messages() {
    let server = compressing_server(false);
    let mut args = fanout_args(server.addr, 20, 1);
    args.size = 1024;
    args.common.compression = true;
    let report = fanout::run(&args, &AtomicBool::new(false)).unwrap();
    assert!(report.success(), "{report:#?}");
    assert_eq!(report.compression_agreed, 21);
    assert!(report.compressed_messages >= report.delivered_of_window, "{report:#?}");
    assert_eq!(Some(report.delivered_of_window), report.expected_deliveries);
    assert!(
        report.unexpected.is_empty() && report.protocol_errors.is_empty(),
        "{report:#?}"
    );
}

#[test]
fn echo_of_large_binary_messages_spans_reads() {
    let server = TestServer::start(|cfg| cfg.echo = true);
    let args = EchoArgs {
        connections: 2,
        size: 70_000,
        in_flight: 2,
        duration: Duration::from_millis(300),
        warmup: Duration::ZERO,
        binary: true,
        common: common(server.addr, None),
    };
    let report = echo::run(&args, &AtomicBool::new(false)).unwrap();
    assert!(report.messages > 0, "{report:#?}");
    assert_eq!(report.mismatches, 0);
    assert_eq!(report.unanswered, 0);
    assert!(report.success(), "{report:#?}");
}

fn fanout_args(addr: SocketAddr, subscribers: u64, publishers: u64) -> FanoutArgs {
    FanoutArgs {
        subscribers,
        publishers,
        room: "hot \"room\"".to_owned(),
        publish_rate: Rate::parse("200/s").unwrap(),
        size: 120,
        duration: Duration::from_millis(1000),
        warmup: Duration::from_millis(200),
        join_timeout: Duration::from_secs(10),
        user_prefix: "t-".to_owned(),
        common: common(addr, None),
    }
}

#[test]
fn fanout_delivers_every_publish_to_every_member_in_order() {
    let server = TestServer::start(|cfg| {
        cfg.echo = false;
        cfg.shards = 2;
    });
    let args = fanout_args(server.addr, 60, 2);
    let report = fanout::run(&args, &AtomicBool::new(false)).unwrap();
    assert!(report.success(), "{report:#?}");
    assert_eq!(report.established, 62);
    assert_eq!((report.welcomed, report.joined), (62, 60));
    // 200/s for 1 s: about 200 publishes in the window, each to 60 members.
    assert!((150..=250).contains(&report.published), "{report:#?}");
    assert_eq!(report.expected_deliveries, Some(report.published * 60));
    assert_eq!(Some(report.delivered_of_window), report.expected_deliveries);
    // Per publish: every one delivered to the 60 members, the latest latency at least
    // the median delivery's.
    let per = report.last_delivery_by_publish.as_ref().unwrap();
    assert_eq!(per.len() as u64, report.published, "{report:#?}");
    assert!(per.iter().all(|&[_, t, ns, count]| count == 60
        && ns > 0
        && (report.window_from_ns..report.window_until_ns).contains(&t)));
    assert_eq!(report.messages_complete, report.published);
    assert_eq!(report.acked, report.published_total, "{report:#?}");
    assert_eq!(
        (report.gaps, report.out_of_order, report.untimed, report.not_member),
        (0, 0, 0, 0)
    );
    sane(report.delivery_latency, report.delivered_of_window);
    sane(report.last_delivery_latency, report.published);
    sane(report.ack_latency, report.published);
    let last = report.last_delivery_latency.unwrap();
    let each = report.delivery_latency.unwrap();
    assert!(last.p50_us >= each.p50_us * 0.99, "{last:?} {each:?}");
    assert!(report.deliveries > 0 && report.deliveries_per_sec > 0.0);
    assert_eq!(report.closed_clean, 62, "{:?}", report.close_failures);
    assert!(report.errors.is_empty() && report.unexpected.is_empty(), "{report:#?}");
}

#[test]
fn direct_delivers_every_send_to_the_partner_in_order() {
    let server = TestServer::start(|cfg| {
        cfg.echo = false;
        cfg.shards = 2;
    });
    let args = DirectArgs {
        pairs: 10,
        send_rate: Rate::parse("400/s").unwrap(),
        duration: Duration::from_millis(1000),
        warmup: Duration::from_millis(200),
        join_timeout: Duration::from_secs(10),
        user_prefix: "d-".to_owned(),
        common: common(server.addr, None),
    };
    let report = fanout::run_direct(&args, &AtomicBool::new(false)).unwrap();
    assert!(report.success(), "{report:#?}");
    assert_eq!(report.mode, "direct");
    assert_eq!((report.established, report.welcomed), (20, 20));
    assert!((300..=500).contains(&report.published), "{report:#?}");
    assert_eq!(report.expected_deliveries, Some(report.published));
    assert_eq!(report.delivered_of_window, report.published);
    assert!(report.last_delivery_by_publish.is_none());
    assert_eq!(report.acked, report.published_total, "{report:#?}");
    assert_eq!((report.gaps, report.out_of_order), (0, 0));
    sane(report.delivery_latency, report.published);
    sane(report.ack_latency, report.published);
    assert!(report.errors.is_empty() && report.unexpected.is_empty(), "{report:#?}");
    // A second run as the same users: their inboxes go on from the first run's seq.
    let report = fanout::run_direct(&args, &AtomicBool::new(false)).unwrap();
    assert!(report.success(), "{report:#?}");
    // Partners are named, so a token cannot stand in for ?user=.
    let mut with_token = args.clone();
    with_token.common.token = Some("T".to_owned());
    assert!(matches!(
        fanout::run_direct(&with_token, &AtomicBool::new(false)),
        Err(BenchError::Usage(_))
    ));
}

#[test]
fn fanout_reports_a_server_that_does_not_speak_the_protocol() {
    // An echo gateway never sends `welcome`: nobody joins, the run says so and fails.
    let server = TestServer::start(|_| {});
    let mut args = fanout_args(server.addr, 4, 1);
    args.join_timeout = Duration::from_millis(500);
    args.duration = Duration::from_millis(200);
    let report = fanout::run(&args, &AtomicBool::new(false)).unwrap();
    assert!(!report.success());
    assert!(report.join_timed_out, "{report:#?}");
    assert_eq!((report.established, report.welcomed, report.joined), (5, 0, 0));
}

/// Two gateways sharing a real `redis-server` (`wsgate serve --redis`).
fn fleet_of_two() -> (crate::cluster::testing::RedisServer, [TestServer; 2]) {
    let redis = crate::cluster::testing::RedisServer::start();
    let node = |id: &str| {
        let server = TestServer::start(|cfg| {
            cfg.echo = false;
            cfg.shards = 1;
            cfg.redis = Some(crate::auth::Secret::new(format!("redis://{}", redis.addr())));
            cfg.node_id = Some(id.to_owned());
        });
        server.wait_for("the shard's Redis connection", |m| m.cluster.up == 1);
        server
    };
    let nodes = [node("b1"), node("b2")];
    for n in &nodes {
        n.wait_for("the fleet's live set", |m| m.cluster.live_nodes >= 2);
    }
    (redis, nodes)
}

fn urls(nodes: &[TestServer]) -> WsUrls {
    let list: Vec<String> = nodes.iter().map(|n| format!("ws://{}/ws", n.addr)).collect();
    WsUrls::parse(&list.join(",")).unwrap()
}

#[test]
fn fleet_runs_spread_connections_over_the_urls_and_cross_gateways() {
    let (_redis, nodes) = fleet_of_two();
    // Fan-out over both gateways: 3 publishers and 40 members split 2/1 and 20/20.
    let mut args = fanout_args(nodes[0].addr, 40, 3);
    args.common.url = urls(&nodes);
    args.publish_rate = Rate::parse("100/s").unwrap();
    let report = fanout::run(&args, &AtomicBool::new(false)).unwrap();
    assert!(report.success(), "{report:#?}");
    assert_eq!(report.url, args.common.url.to_string());
    assert!(report.url.contains(','));
    assert_eq!(report.messages_complete, report.published, "{report:#?}");
    for (node, want) in nodes.iter().zip([22, 21]) {
        node.wait_for("its share of the upgrades", |m| m.upgrades == want);
    }
    // Direct: every pair has one user on each gateway, all delivered, in order.
    let direct = DirectArgs {
        pairs: 6,
        send_rate: Rate::parse("200/s").unwrap(),
        duration: Duration::from_millis(800),
        warmup: Duration::from_millis(200),
        join_timeout: Duration::from_secs(10),
        user_prefix: "fd-".to_owned(),
        common: CommonArgs {
            url: urls(&nodes),
            ..common(nodes[0].addr, None)
        },
    };
    let report = fanout::run_direct(&direct, &AtomicBool::new(false)).unwrap();
    assert!(report.success(), "{report:#?}");
    assert_eq!(report.delivered_of_window, report.published);
    for (node, want) in nodes.iter().zip([22 + 6, 21 + 6]) {
        node.wait_for("one user of every pair", |m| m.upgrades == want);
    }
}

#[test]
fn subscribers_only_and_publishers_only_runs_share_one_clock() {
    let (_redis, nodes) = fleet_of_two();
    // One "process" (thread) holds the members, on both gateways, and only listens...
    let mut listen = fanout_args(nodes[0].addr, 30, 0);
    listen.common.url = urls(&nodes);
    listen.room = "split".to_owned();
    listen.warmup = Duration::ZERO;
    listen.duration = Duration::from_secs(4);
    let listener = std::thread::spawn(move || fanout::run(&listen, &AtomicBool::new(false)).unwrap());
    for node in &nodes {
        node.wait_for("15 members connected", |m| m.upgrades == 15 && m.connections == 15);
    }
    std::thread::sleep(Duration::from_millis(500));
    // ... another publishes, holding no member.
    let mut publish = fanout_args(nodes[1].addr, 0, 2);
    publish.room = "split".to_owned();
    publish.publish_rate = Rate::parse("50/s").unwrap();
    publish.duration = Duration::from_millis(1000);
    publish.warmup = Duration::from_millis(100);
    let sent = fanout::run(&publish, &AtomicBool::new(false)).unwrap();
    assert!(sent.success(), "{sent:#?}");
    assert_eq!(sent.joined, 0);
    assert_eq!(sent.expected_deliveries, Some(0));
    assert!(sent.published > 0 && sent.acked == sent.published_total, "{sent:#?}");
    let heard = listener.join().unwrap();
    assert!(heard.success(), "{heard:#?}");
    assert_eq!(heard.joined, 30);
    assert_eq!(heard.expected_deliveries, None);
    assert_eq!(heard.published_total, 0);
    // Every publish of the publisher's window reached all 30 members, timed on the
    // shared clock: a latency well under a second, not the two runs' offset.
    let per = heard.last_delivery_by_publish.clone().unwrap();
    let window: Vec<_> = per
        .iter()
        .filter(|p| (sent.window_from_ns..sent.window_until_ns).contains(&p[1]))
        .collect();
    assert_eq!(window.len() as u64, sent.published, "{per:?}");
    assert!(
        window.iter().all(|p| p[3] == 30 && p[2] > 0 && p[2] < 1_000_000_000),
        "{per:?}"
    );
    assert_eq!(heard.delivered_of_window, per.iter().map(|p| p[3]).sum::<u64>());
    assert_eq!((heard.gaps, heard.out_of_order), (0, 0));
    // Both 0 is a usage error.
    let mut neither = fanout_args(nodes[0].addr, 0, 0);
    neither.duration = Duration::from_millis(100);
    assert!(matches!(
        fanout::run(&neither, &AtomicBool::new(false)),
        Err(BenchError::Usage(_))
    ));
}

#[test]
fn source_ips_are_checked_against_every_url() {
    let mut args = density_args("127.0.0.1:9".parse().unwrap(), 2, Some("127.0.0.2"));
    args.common.url = WsUrls::parse("ws://127.0.0.1:9/ws,ws://[::1]:9/ws").unwrap();
    let err = density::run(&args, &AtomicBool::new(false)).unwrap_err();
    assert!(
        matches!(&err, BenchError::Usage(m) if m.contains("[::1]:9") && m.contains("IPv6")),
        "{err}"
    );
}

#[test]
fn rates_parse() {
    assert_eq!(Rate::parse("5000/s").unwrap().per_second(), 5000.0);
    assert_eq!(Rate::parse("5000").unwrap().per_second(), 5000.0);
    assert_eq!(Rate::parse("300/m").unwrap().per_second(), 5.0);
    assert_eq!(Rate::parse("1_000/s").unwrap().per_second(), 1000.0);
    for bad in ["", "0", "x/s", "5/h", "-1/s", "20000000/s"] {
        assert!(Rate::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn limits_that_cannot_fit_name_the_knob() {
    let limits = Preflight {
        nofile_soft: 20_000,
        nofile_hard: 20_000,
        ports_per_address: Some(28_232),
        source_addresses: 1,
    };
    assert!(check_fit(10_000, 2, &limits).is_ok());
    let err = check_fit(20_000, 2, &limits).unwrap_err();
    assert!(err.contains("RLIMIT_NOFILE") && err.contains("limits.conf"), "{err}");
    let wide = Preflight {
        nofile_soft: 1 << 20,
        ..limits
    };
    let err = check_fit(30_000, 2, &wide).unwrap_err();
    assert!(
        err.contains("--source-ips") && err.contains("ip_local_port_range"),
        "{err}"
    );
    let many = Preflight {
        source_addresses: 39,
        ..wide
    };
    assert!(check_fit(1_000_000, 16, &many).is_ok());
    // Through the real entry point: more than any fd limit allows is exit 2.
    let server = TestServer::start(|_| {});
    let args = density_args(server.addr, super::MAX_CONNECTIONS, None);
    let err = density::run(&args, &AtomicBool::new(false)).unwrap_err();
    assert!(matches!(err, BenchError::Limits(_)), "{err}");
    let args = density_args(server.addr, super::MAX_CONNECTIONS + 1, None);
    assert!(matches!(
        density::run(&args, &AtomicBool::new(false)),
        Err(BenchError::Usage(_))
    ));
}

/// `bench density --user-prefix` with `--token-secret-file`: every connection
/// authenticates as a user of its own (the server sees as many users as connections);
/// `--token-file` needs a token per connection.
#[test]
fn density_makes_every_connection_a_user_of_its_own() {
    use crate::auth::{AuthMode, Secret};
    use crate::server::tests::SECRET;
    let server = TestServer::start(|cfg| {
        cfg.echo = false;
        cfg.auth.mode = AuthMode::Jwt;
        cfg.auth.hmac_secret = Some(Secret::new(SECRET));
    });
    let dir = std::env::temp_dir().join(format!("wsgate-bench-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let mut args = density_args(server.addr, 40, None);
    args.hold = Duration::from_millis(1500);
    args.user_prefix = Some("d-".to_owned());
    args.token_secret_file = Some(secret_file);
    let most_users = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut most = 0;
            for _ in 0..150 {
                most = most.max(server.metrics().msg_owned_users_online);
                std::thread::sleep(Duration::from_millis(20));
            }
            most
        });
        let report = density::run(&args, &AtomicBool::new(false)).unwrap();
        assert_eq!(report.established, 40, "{:?}", report.failures);
        watcher.join().unwrap()
    });
    assert_eq!(most_users, 40, "one user per connection");

    // A warm-up: its connections are users of their own, closed before the baseline.
    let mut warm = args.clone();
    (warm.connections, warm.warmup, warm.hold) = (10, 15, Duration::from_millis(200));
    warm.user_prefix = Some("w-".to_owned());
    let report = density::run(&warm, &AtomicBool::new(false)).unwrap();
    assert_eq!((report.warmup_connections, report.established), (15, 10), "{report:#?}");
    let users = |m: &crate::metrics::ShardMetrics| m.msg.owner_entries;
    server.wait_for("every user, warm-up ones too, known to its owner", |m| {
        users(m) == 40 + 15 + 10
    });

    // A token file with fewer tokens than connections is refused before connecting.
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "a\nb\n\n").unwrap();
    let mut args = density_args(server.addr, 3, None);
    args.token_file = Some(tokens);
    match density::run(&args, &AtomicBool::new(false)) {
        Err(BenchError::Usage(text)) => assert!(text.contains("holds 2 tokens"), "{text}"),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
