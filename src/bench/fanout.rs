//! `wsgate bench fanout`: deliveries per second and publish-to-delivery latency of one
//! room with many members, against a gateway speaking `wsgate.v1.json`.
//!
//! 1. Ramp: `--subscribers` + `--publishers` connections at `--rate`, each offering the
//!    subprotocol `wsgate.v1.json` and, unless `--token` is given, naming its user with
//!    `?user=<prefix>sub-N` / `pub-N` (the gateway's `--auth-mode none`).
//! 2. Join: each connection waits for `welcome`; subscribers send `join` and wait for
//!    `joined` (up to `--join-timeout` for all of them).
//! 3. Traffic: the publishers together publish `--publish-rate` messages per second to
//!    the room (`exclude_self`), each body `{"t": <send ns>, "n": <number>, "p": pad}`
//!    padded to `--size`; a warm-up (`--warmup`) first, then the measured `--duration`.
//! 4. Drain: once publishing stops, the bench waits until every publish is acked and
//!    deliveries stop (at most [`DRAIN_TIMEOUT`]), then closes every connection with
//!    1000. What is not delivered by then is reported as such (`delivered` below
//!    `expected`), not as a gap: a gap is a `seq` skipped among messages received.
//!
//! Subscribers read each `room_msg` with [`super::wire`] (one pass, no allocation), time
//! it against `body.t` (one clock for every worker), and check the room's `seq` per
//! connection (gaps and repeats counted). The worker side is in `worker/fan.rs`.
//!
//! # A fleet
//!
//! `--url` may list several gateways of one fleet (`wsgate serve --redis`): subscribers
//! and publishers each spread round-robin over them, so one room spans the processes.
//! One bench process holds at most RLIMIT_NOFILE sockets (20,000 on the development
//! box), so a room bigger than that takes several bench processes: each runs
//! `--publishers 0` (subscribers only: join, read, time; the run lasts `--warmup` +
//! `--duration` of listening, and as the publishes are another process's, no delivery is
//! "expected" and none is counted missing), and one more runs the publishers
//! (`--subscribers 0` if it holds no members). Send times are `CLOCK_MONOTONIC` ns (the
//! clock of every process on the host), so any process's subscribers time any process's
//! publishes. The `--json` report carries, per publish number, its publish time, latest
//! delivery latency and delivery count (`last_delivery_by_publish`), and
//! `scripts/fleet-fanout.py` merges the reports of one run into publish-to-last-delivery
//! percentiles over every member.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::url::Assign;
use super::worker::FanoutPlan;
use super::{BenchError, CommonArgs, Fleet, Latency, RampEnd, Setup, Table, fmt_counts};
use crate::msg::protocol::SUBPROTOCOL_JSON;

/// Longest wait, after publishing stops, for the last deliveries and acks.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries stopped: every publish acked and no new delivery for this long.
pub const DRAIN_QUIET: Duration = Duration::from_millis(300);
/// Largest `--size` of a publish (the gateway's default payload limit is smaller).
pub const MAX_PUBLISH_BYTES: u64 = 1024 * 1024;
/// Most publishers.
pub const MAX_PUBLISHERS: u64 = 1000;

/// `wsgate bench fanout ...`.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct FanoutArgs {
    /// Subscriber connections, all members of the room (0: publishers only, for a room
    /// whose members other bench processes hold).
    #[arg(long, value_name = "S", default_value_t = 1000)]
    pub subscribers: u64,
    /// Publisher connections (not members); the publish rate is split among them. 0:
    /// subscribers only, listening for --warmup + --duration to another bench process's
    /// publishes (merge the --json reports with scripts/fleet-fanout.py).
    #[arg(long, value_name = "P", default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=MAX_PUBLISHERS))]
    pub publishers: u64,
    /// The room.
    #[arg(long, value_name = "NAME", default_value = "bench")]
    pub room: String,
    /// Publishes per second, all publishers together: N, N/s or N/m.
    #[arg(long, value_name = "RATE", default_value = "100/s", value_parser = super::Rate::parse)]
    pub publish_rate: super::Rate,
    /// Bytes of each publish's JSON text (the body is padded to reach it).
    #[arg(long, value_name = "SIZE", default_value = "100", value_parser = parse_publish_size)]
    pub size: u64,
    /// Measured time, after the warm-up.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::duration_arg)]
    pub duration: Duration,
    /// Publishing before the measurement starts (not counted).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::duration_arg)]
    pub warmup: Duration,
    /// How long every connection may take from its upgrade to `joined`.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = super::duration_arg)]
    pub join_timeout: Duration,
    /// User ids are `<PREFIX>sub-N` and `<PREFIX>pub-N`, sent as `?user=` (for a
    /// gateway run with --auth-mode none); not sent when --token is given.
    #[arg(long, value_name = "PREFIX", default_value = "bench-", value_parser = parse_user_prefix)]
    pub user_prefix: String,
    /// Options shared with `density` and `echo`.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `wsgate bench direct ...`: user to user.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct DirectArgs {
    /// Pairs of users (two connections each): connection 2i sends to user 2i+1 and back.
    /// With several --url gateways pair i's two users are on URLs i % n and (i + 1) % n:
    /// every message crosses from one gateway to another.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub pairs: u64,
    /// Messages per second, all senders together: N, N/s or N/m.
    #[arg(long, value_name = "RATE", default_value = "1000/s", value_parser = super::Rate::parse)]
    pub send_rate: super::Rate,
    /// Measured time, after the warm-up.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::duration_arg)]
    pub duration: Duration,
    /// Sending before the measurement starts (not counted).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::duration_arg)]
    pub warmup: Duration,
    /// How long every connection may take from its upgrade to `welcome`.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = super::duration_arg)]
    pub join_timeout: Duration,
    /// User ids are `<PREFIX>u-N`, sent as `?user=` (a gateway run with --auth-mode
    /// none; each sender must know its partner's id, so --token is refused).
    #[arg(long, value_name = "PREFIX", default_value = "bench-", value_parser = parse_user_prefix)]
    pub user_prefix: String,
    /// Options shared with `density` and `echo`.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// What one fan-out or direct run does.
struct Spec<'a> {
    mode: &'static str,
    subscribers: u64,
    publishers: u64,
    room: &'a str,
    rate: f64,
    size: u64,
    duration: Duration,
    warmup: Duration,
    join_timeout: Duration,
    user_prefix: &'a str,
    direct: bool,
    common: &'a CommonArgs,
}

fn parse_publish_size(text: &str) -> Result<u64, String> {
    crate::units::parse_size(text)
        .filter(|n| (1..=MAX_PUBLISH_BYTES).contains(n))
        .ok_or_else(|| "a size from 1 byte to 1MiB: bytes, or a number with KiB or MiB".to_owned())
}

fn parse_user_prefix(text: &str) -> Result<String, String> {
    if text.len() <= 32 && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        Ok(text.to_owned())
    } else {
        Err("at most 32 of A-Z a-z 0-9 - _ .".to_owned())
    }
}

/// The fan-out report (`--json` prints it as is).
#[derive(Clone, Debug, Serialize)]
pub struct FanoutReport {
    /// `"fanout"` or `"direct"`.
    pub mode: &'static str,
    /// The URL connected to (or the URLs, comma-separated).
    pub url: String,
    /// Worker threads used.
    pub workers: usize,
    /// The room.
    pub room: String,
    /// Subscribers asked for.
    pub subscribers_requested: u64,
    /// Publishers asked for.
    pub publishers_requested: u64,
    /// Upgrades completed (subscribers and publishers).
    pub established: u64,
    /// Failed attempts by reason.
    pub failures: BTreeMap<String, u64>,
    /// How the ramp ended.
    pub ramp_end: RampEnd,
    /// `welcome`s received.
    pub welcomed: u64,
    /// Subscribers whose `joined` arrived: the room's members.
    pub joined: u64,
    /// From the end of the ramp to the last `joined`, seconds.
    pub join_secs: f64,
    /// Bytes of each publish.
    pub size_bytes: u64,
    /// Publishes per second asked for.
    pub publish_rate: f64,
    /// Warm-up asked for, seconds.
    pub warmup_secs: f64,
    /// Measurement asked for, seconds.
    pub duration_secs: f64,
    /// Measurement actually done (shorter after Ctrl-C), seconds.
    pub measured_secs: f64,
    /// Publishes sent in the window.
    pub published: u64,
    /// `published / measured_secs`.
    pub publishes_per_sec: f64,
    /// Publishes acked in all (warm-up included).
    pub acked: u64,
    /// Publishes sent in all (warm-up included).
    pub published_total: u64,
    /// Publish to ack, publishes of the window.
    pub ack_latency: Option<Latency>,
    /// Publishes never acked.
    pub unacked: u64,
    /// `room_msg`s received inside the window.
    pub deliveries: u64,
    /// `deliveries / measured_secs`.
    pub deliveries_per_sec: f64,
    /// `published × joined`: what the window's publishes should deliver (`None` with
    /// `--publishers 0`: the publishes are another process's).
    pub expected_deliveries: Option<u64>,
    /// Deliveries of the window's publishes, whenever received (drain included).
    pub delivered_of_window: u64,
    /// Publish to delivery, every delivery of a window publish.
    pub delivery_latency: Option<Latency>,
    /// Publish to the last member's delivery, per window publish.
    pub last_delivery_latency: Option<Latency>,
    /// Window publishes delivered to every member.
    pub messages_complete: u64,
    /// Room sequence numbers skipped, summed over members.
    pub gaps: u64,
    /// Sequence numbers not above the previous one (repeats, reordering).
    pub out_of_order: u64,
    /// `room_msg`s without the bench's `body.t`.
    pub untimed: u64,
    /// `room_msg`s before `joined`.
    pub not_member: u64,
    /// `error` answers by code.
    pub errors: BTreeMap<String, u64>,
    /// Other server messages by type.
    pub unexpected: BTreeMap<String, u64>,
    /// Connections that ended before we closed them, by how (`server_close_<code>`).
    pub dropped: BTreeMap<String, u64>,
    /// Our closes (1000) that ended cleanly.
    pub closed_clean: u64,
    /// Our closes that did not, by reason.
    pub close_failures: BTreeMap<String, u64>,
    /// WebSocket protocol errors by the server.
    pub protocol_errors: BTreeMap<String, u64>,
    /// `--compression`: permessage-deflate was offered.
    pub compression_offered: bool,
    /// Upgrades whose 101 agreed to permessage-deflate.
    pub compression_agreed: u64,
    /// Compressed messages received (and inflated).
    pub compressed_messages: u64,
    /// Ctrl-C ended the run early.
    pub interrupted: bool,
    /// Not every member joined within --join-timeout.
    pub join_timed_out: bool,
    /// Workers had to stop at the hard deadline (or never reported).
    pub hard_deadline_hit: bool,
    /// Start of the measurement window, ns on `CLOCK_MONOTONIC` (the host's clock, so
    /// windows of several bench processes compare).
    pub window_from_ns: u64,
    /// End of the measurement window, ns on `CLOCK_MONOTONIC`.
    pub window_until_ns: u64,
    /// Fan-out: `[n, t, last_ns, count]` for every publish number `n` delivered to this
    /// process's subscribers (published in its window): the publish time (ns on
    /// `CLOCK_MONOTONIC`), the latest delivery's latency (ns), and the deliveries seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_delivery_by_publish: Option<Vec<[u64; 4]>>,
}

impl FanoutReport {
    /// Whether the run did what was asked: everyone connected and joined, messages
    /// delivered in order to every member, nothing refused.
    /// Subscribers only (`--publishers 0`): something delivered, none in excess of what
    /// was counted; publishers only (`--subscribers 0`): something published.
    pub fn success(&self) -> bool {
        let listening = self.subscribers_requested > 0 || self.mode == "direct";
        self.established == self.subscribers_requested + self.publishers_requested
            && self.joined == self.subscribers_requested
            && (!listening || self.deliveries > 0)
            && (self.publishers_requested == 0 || self.published > 0)
            && self
                .expected_deliveries
                .is_none_or(|e| !listening || self.delivered_of_window == e)
            && self.gaps == 0
            && self.out_of_order == 0
            && self.errors.is_empty()
            && self.dropped.is_empty()
            && !self.interrupted
            && !self.hard_deadline_hit
    }

    /// Prints the table, or the JSON object.
    pub fn print(&self, json: bool) {
        if json {
            super::print_json(self);
            return;
        }
        let none = || "none".to_owned();
        let direct = self.mode == "direct";
        let mut t = Table::new();
        t.row("target", format!("{} ({} workers)", self.url, self.workers));
        t.row(
            "connections",
            format!(
                "{} of {} established ({} subscribers, {} publishers)",
                self.established,
                self.subscribers_requested + self.publishers_requested,
                self.subscribers_requested,
                self.publishers_requested
            ),
        );
        t.row("failures", fmt_counts(&self.failures));
        t.compression(
            self.compression_offered,
            self.compression_agreed,
            self.established,
            self.compressed_messages,
        );
        if !direct {
            t.row(
                "room",
                format!(
                    "{}: {} members joined in {:.2}s ({} welcomed)",
                    self.room, self.joined, self.join_secs, self.welcomed
                ),
            );
        }
        t.row(
            "traffic",
            format!(
                "{:.0} publishes/s asked, {} B each; {:.2}s measured after {:.1}s warm-up",
                self.publish_rate, self.size_bytes, self.measured_secs, self.warmup_secs
            ),
        );
        t.row(
            "publishes/s",
            format!(
                "{:.0}  ({} in the window; {} sent, {} acked, {} unacked in all)",
                self.publishes_per_sec, self.published, self.published_total, self.acked, self.unacked
            ),
        );
        t.row("publish to ack", self.ack_latency.map_or_else(none, |l| l.human()));
        t.row(
            "deliveries/s",
            format!("{:.0}  ({} in the window)", self.deliveries_per_sec, self.deliveries),
        );
        match self.expected_deliveries {
            Some(expected) => t.row(
                "delivered",
                format!(
                    "{} of {expected} expected (window publishes × members) before the bench closed, {} messages reached every member",
                    self.delivered_of_window, self.messages_complete
                ),
            ),
            None => t.row(
                "delivered",
                format!(
                    "{} of publishes in the window (another process's: none expected), {} messages reached every member here",
                    self.delivered_of_window, self.messages_complete
                ),
            ),
        }
        t.row(
            "publish to delivery",
            self.delivery_latency.map_or_else(none, |l| l.human()),
        );
        if !direct {
            t.row(
                "publish to last delivery",
                self.last_delivery_latency.map_or_else(none, |l| l.human()),
            );
        }
        t.row(
            "order",
            format!(
                "{} gaps, {} out of order, {} before joined, {} untimed",
                self.gaps, self.out_of_order, self.not_member, self.untimed
            ),
        );
        t.row("errors from the server", fmt_counts(&self.errors));
        if !self.unexpected.is_empty() {
            t.row("other messages", fmt_counts(&self.unexpected));
        }
        t.endings(
            &self.dropped,
            self.closed_clean,
            &self.close_failures,
            &self.protocol_errors,
        );
        if self.join_timed_out {
            t.row("note", "not every subscriber joined within --join-timeout");
        }
        if self.interrupted {
            t.row("note", "interrupted (Ctrl-C): figures cover the window so far");
        }
        if self.hard_deadline_hit {
            t.row("note", "workers stopped at the hard deadline");
        }
        t.print(if direct {
            "wsgate bench direct (publish = send, delivery = msg)"
        } else {
            "wsgate bench fanout"
        });
    }
}

/// Runs the fan-out benchmark (without printing).
pub fn run(args: &FanoutArgs, interrupt: &AtomicBool) -> Result<FanoutReport, BenchError> {
    if args.subscribers == 0 && args.publishers == 0 {
        return Err(BenchError::Usage(
            "--subscribers and --publishers cannot both be 0".to_owned(),
        ));
    }
    run_spec(
        &Spec {
            mode: "fanout",
            subscribers: args.subscribers,
            publishers: args.publishers,
            room: &args.room,
            rate: args.publish_rate.per_second(),
            size: args.size,
            duration: args.duration,
            warmup: args.warmup,
            join_timeout: args.join_timeout,
            user_prefix: &args.user_prefix,
            direct: false,
            common: &args.common,
        },
        interrupt,
    )
}

/// Runs the user-to-user benchmark (without printing).
pub fn run_direct(args: &DirectArgs, interrupt: &AtomicBool) -> Result<FanoutReport, BenchError> {
    if args.pairs == 0 {
        return Err(BenchError::Usage("--pairs must be at least 1".to_owned()));
    }
    if args.common.token.is_some() {
        return Err(BenchError::Usage(
            "bench direct names its users with ?user= (a gateway with --auth-mode none); --token cannot name a partner"
                .to_owned(),
        ));
    }
    run_spec(
        &Spec {
            mode: "direct",
            subscribers: 0,
            publishers: args.pairs * 2,
            room: "",
            rate: args.send_rate.per_second(),
            size: 0,
            duration: args.duration,
            warmup: args.warmup,
            join_timeout: args.join_timeout,
            user_prefix: &args.user_prefix,
            direct: true,
            common: &args.common,
        },
        interrupt,
    )
}

fn run_spec(args: &Spec<'_>, interrupt: &AtomicBool) -> Result<FanoutReport, BenchError> {
    let common = args.common;
    let connections = args.subscribers + args.publishers;
    let mut setup = Setup::new(common, connections)?;
    setup.offer_subprotocol(common, SUBPROTOCOL_JSON);
    setup.assign = if args.direct {
        Assign::DirectPairs
    } else {
        Assign::Fanout {
            publishers: args.publishers,
        }
    };
    let rate = args.rate;
    // Subscribers only: the publishes' rate is another process's, so the table may grow
    // to its limit (it grows with the highest number seen, not ahead of it).
    let expected_publishes = if args.publishers == 0 {
        super::worker::MAX_TRACKED_MESSAGES as f64
    } else {
        rate * (args.warmup + args.duration).as_secs_f64() * 1.1 + 1000.0
    };
    let plan = FanoutPlan {
        publishers: args.publishers,
        rate_per_publisher: if args.publishers == 0 {
            0.0
        } else {
            rate / args.publishers as f64
        },
        room_json: serde_json::to_string(args.room)
            .map_err(|e| BenchError::Usage(format!("--room: {e}")))?
            .into(),
        size: args.size as usize,
        user_prefix: common.token.is_none().then(|| Arc::from(args.user_prefix)),
        tracked_messages: (expected_publishes as u64).min(super::worker::MAX_TRACKED_MESSAGES),
        direct: args.direct,
    };
    let run_time = args.join_timeout + args.warmup + args.duration + DRAIN_TIMEOUT;
    let fleet = Fleet::start(
        &setup,
        connections,
        common.rate.per_second(),
        common,
        None,
        Some(plan),
        run_time,
    )?;
    let ramp_end = fleet.ramp(interrupt, common.connect_timeout);
    let mut interrupted = ramp_end == RampEnd::Interrupted;

    // Join: every established connection welcomed, every subscriber joined.
    let join_start = Instant::now();
    let join_limit = join_start + args.join_timeout;
    let mut join_timed_out = false;
    while !interrupted {
        let t = fleet.totals();
        let members_wanted = t.established.saturating_sub(args.publishers.min(t.established));
        if t.welcomed >= t.established && t.joined >= members_wanted {
            break;
        }
        if interrupt.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        if Instant::now() >= join_limit || t.done > 0 {
            join_timed_out = true;
            break;
        }
        fleet.show(&format!(
            "join {:>5.1}s  welcomed {}/{}  joined {}/{}",
            join_start.elapsed().as_secs_f64(),
            t.welcomed,
            t.established,
            t.joined,
            members_wanted
        ));
        std::thread::sleep(Duration::from_millis(50));
    }
    let join_secs = join_start.elapsed().as_secs_f64();

    let window = fleet.measure(
        args.warmup,
        args.duration,
        interrupt,
        interrupted,
        |t| t.deliveries,
        |phase, elapsed, rate, left, t| {
            format!(
                "{phase} {elapsed:>5.1}s  {rate:>10.0} deliveries/s  published {}  acked {}  open {}  ETA {:.0}s",
                t.published,
                t.acked,
                t.open,
                left.as_secs_f64()
            )
        },
    );
    let (measure_from, measure_until) = (window.measure_from, window.measure_until);
    interrupted = window.interrupted;
    // Drain: until deliveries stop coming.
    let drain_until = Instant::now() + DRAIN_TIMEOUT;
    let mut seen = (fleet.totals().deliveries, Instant::now());
    while !interrupted && Instant::now() < drain_until {
        std::thread::sleep(Duration::from_millis(50));
        let t = fleet.totals();
        if t.deliveries != seen.0 {
            seen = (t.deliveries, Instant::now());
        } else if seen.1.elapsed() >= DRAIN_QUIET && t.acked >= t.published {
            break;
        }
        fleet.show(&format!(
            "drain: {} deliveries, {} of {} publishes acked",
            t.deliveries, t.acked, t.published
        ));
    }
    let (r, missing) = fleet.finish();
    let f = &r.fanout;
    let measured_secs = Duration::from_nanos(measure_until.saturating_sub(measure_from)).as_secs_f64();
    let per_sec = |n: f64| if measured_secs > 0.0 { n / measured_secs } else { 0.0 };
    // Direct: each message goes to its one recipient connection.
    let members = if args.direct { 1 } else { f.joined };
    let (last_h, messages_complete) = f.last_delivery(members);
    Ok(FanoutReport {
        mode: args.mode,
        url: common.url.to_string(),
        workers: setup.workers,
        room: args.room.to_owned(),
        subscribers_requested: args.subscribers,
        publishers_requested: args.publishers,
        established: r.established,
        failures: r.failures.clone(),
        ramp_end,
        welcomed: f.welcomed,
        joined: f.joined,
        join_secs,
        size_bytes: args.size,
        publish_rate: rate,
        warmup_secs: args.warmup.as_secs_f64(),
        duration_secs: args.duration.as_secs_f64(),
        measured_secs,
        published: f.published_in_window,
        publishes_per_sec: per_sec(f.published_in_window as f64),
        acked: f.acked_total,
        published_total: f.published_total,
        ack_latency: Latency::of(&f.ack_ns),
        unacked: f.unacked,
        deliveries: f.deliveries_in_window,
        deliveries_per_sec: per_sec(f.deliveries_in_window as f64),
        expected_deliveries: (args.publishers > 0).then_some(f.published_in_window * members),
        delivered_of_window: f.deliveries_of_window,
        delivery_latency: Latency::of(&f.delivery_ns),
        last_delivery_latency: Latency::of(&last_h),
        messages_complete,
        gaps: f.gaps,
        out_of_order: f.backwards,
        untimed: f.untimed,
        not_member: f.not_member,
        errors: f.errors.clone(),
        unexpected: f.unexpected.clone(),
        dropped: r.dropped.clone(),
        closed_clean: r.closed_clean,
        close_failures: r.close_failures.clone(),
        protocol_errors: r.protocol_errors.clone(),
        compression_offered: common.compression,
        compression_agreed: r.compression_agreed,
        compressed_messages: r.compressed_messages,
        interrupted,
        join_timed_out,
        hard_deadline_hit: r.hard_deadline_hit || missing > 0,
        window_from_ns: measure_from,
        window_until_ns: measure_until,
        last_delivery_by_publish: (!args.direct).then(|| f.per_publish()),
    })
}
