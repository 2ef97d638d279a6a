//! `wsgate bench echo`: messages per second and round-trip latency through a gateway
//! run with `--echo`.
//!
//! Each connection keeps `--in-flight` messages of `--size` bytes in flight: it sends
//! K, then one more per echo received. A warm-up (`--warmup`) runs first and is not
//! measured; then, for `--duration`, every echo sent inside the window and received
//! before its end is counted and its round trip recorded in an HDR histogram. The send
//! time of each message waits in a per-connection FIFO (the gateway echoes in order);
//! every echoed payload is compared with what was sent (each message's bytes derive
//! from its connection and sequence number, so nothing is stored to compare with).
//! After the window no message is sent; the last echoes are awaited (up to
//! [`ECHO_DRAIN_TIMEOUT`]) and the connections closed with 1000.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::worker::EchoPlan;
use super::{BenchError, CommonArgs, Fleet, Latency, RampEnd, Setup, Table, fmt_bytes, fmt_counts};

/// How long, after the window, the bench waits for the echoes still in flight.
pub const ECHO_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `--size`: 16 MiB (the gateway's default message limit is 1 MiB; raise it
/// there first).
pub const MAX_MESSAGE_BYTES: u64 = 16 * 1024 * 1024;
/// Largest `--in-flight` per connection (each costs 8 bytes of FIFO per connection).
pub const MAX_IN_FLIGHT: u32 = 1024;

/// `wsgate bench echo ...`.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct EchoArgs {
    /// Connections.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub connections: u64,
    /// Payload bytes per message: bytes, or with KiB or MiB.
    #[arg(long, value_name = "SIZE", default_value = "32", value_parser = parse_message_size)]
    pub size: u64,
    /// Messages each connection keeps in flight.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_IN_FLIGHT as i64))]
    pub in_flight: u32,
    /// Measured time, after the warm-up.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::duration_arg)]
    pub duration: Duration,
    /// Traffic before the measurement starts (not counted).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::duration_arg)]
    pub warmup: Duration,
    /// Binary messages (default: text).
    #[arg(long)]
    pub binary: bool,
    /// Options shared with `density`.
    #[command(flatten)]
    pub common: CommonArgs,
}

fn parse_message_size(text: &str) -> Result<u64, String> {
    crate::units::parse_size(text)
        .filter(|n| (1..=MAX_MESSAGE_BYTES).contains(n))
        .ok_or_else(|| "a size from 1 byte to 16MiB: bytes, or a number with KiB or MiB".to_owned())
}

/// The echo report (`--json` prints it as is).
#[derive(Clone, Debug, Serialize)]
pub struct EchoReport {
    /// `"echo"`.
    pub mode: &'static str,
    /// The URL connected to.
    pub url: String,
    /// Worker threads used.
    pub workers: usize,
    /// Connections asked for.
    pub connections_requested: u64,
    /// Upgrades completed.
    pub established: u64,
    /// Failed attempts by reason.
    pub failures: BTreeMap<String, u64>,
    /// How the ramp ended.
    pub ramp_end: RampEnd,
    /// Payload bytes per message.
    pub size_bytes: u64,
    /// Messages in flight per connection.
    pub in_flight: u32,
    /// `"text"` or `"binary"`.
    pub message_type: &'static str,
    /// Warm-up asked for, seconds.
    pub warmup_secs: f64,
    /// Measurement asked for, seconds.
    pub duration_secs: f64,
    /// Measurement actually done (shorter after Ctrl-C), seconds.
    pub measured_secs: f64,
    /// Echoes counted in the window.
    pub messages: u64,
    /// `messages / measured_secs`.
    pub messages_per_sec: f64,
    /// Payload bytes echoed per second (one direction).
    pub payload_bytes_per_sec: f64,
    /// Round trip, send to echo received.
    pub rtt: Option<Latency>,
    /// Messages sent in all (warm-up included).
    pub sent: u64,
    /// Echoes received in all.
    pub received: u64,
    /// Messages never echoed before their connection closed.
    pub unanswered: u64,
    /// Echoes that differ from what was sent (payload or type).
    pub mismatches: u64,
    /// Connections that ended before we closed them, by how.
    pub dropped: BTreeMap<String, u64>,
    /// Our closes (1000) that ended cleanly.
    pub closed_clean: u64,
    /// Our closes that did not, by reason.
    pub close_failures: BTreeMap<String, u64>,
    /// Protocol errors by the server.
    pub protocol_errors: BTreeMap<String, u64>,
    /// `--compression`: permessage-deflate was offered.
    pub compression_offered: bool,
    /// Upgrades whose 101 agreed to permessage-deflate.
    pub compression_agreed: u64,
    /// Compressed messages received (and inflated).
    pub compressed_messages: u64,
    /// Ctrl-C ended the run early.
    pub interrupted: bool,
    /// Workers had to stop at the hard deadline (or never reported).
    pub hard_deadline_hit: bool,
}

impl EchoReport {
    /// Whether the run did what was asked: all connected, echoes measured, every one
    /// correct and answered.
    pub fn success(&self) -> bool {
        self.established == self.connections_requested
            && self.messages > 0
            && self.mismatches == 0
            && self.unanswered == 0
            && !self.interrupted
            && !self.hard_deadline_hit
    }

    /// Prints the table, or the JSON object.
    pub fn print(&self, json: bool) {
        if json {
            super::print_json(self);
            return;
        }
        let mut t = Table::new();
        t.row("target", format!("{} ({} workers)", self.url, self.workers));
        t.row(
            "connections",
            format!("{} of {} established", self.established, self.connections_requested),
        );
        t.row("failures", fmt_counts(&self.failures));
        t.compression(
            self.compression_offered,
            self.compression_agreed,
            self.established,
            self.compressed_messages,
        );
        t.row(
            "traffic",
            format!(
                "{} B {} messages, {} in flight per connection",
                self.size_bytes, self.message_type, self.in_flight
            ),
        );
        t.row(
            "window",
            format!(
                "{:.2}s measured after {:.1}s warm-up",
                self.measured_secs, self.warmup_secs
            ),
        );
        t.row(
            "messages/s",
            format!(
                "{:.0}  ({} echoes, {}/s of payload each way)",
                self.messages_per_sec,
                self.messages,
                fmt_bytes(self.payload_bytes_per_sec)
            ),
        );
        t.row("round trip", self.rtt.map_or("none".to_owned(), |l| l.human()));
        t.row(
            "verified",
            format!(
                "{} sent, {} received, {} mismatched, {} unanswered",
                self.sent, self.received, self.mismatches, self.unanswered
            ),
        );
        t.endings(
            &self.dropped,
            self.closed_clean,
            &self.close_failures,
            &self.protocol_errors,
        );
        if self.interrupted {
            t.row("note", "interrupted (Ctrl-C): figures cover the window so far");
        }
        if self.hard_deadline_hit {
            t.row("note", "workers stopped at the hard deadline");
        }
        t.print("wsgate bench echo");
    }
}

/// Runs the echo benchmark (without printing).
pub fn run(args: &EchoArgs, interrupt: &AtomicBool) -> Result<EchoReport, BenchError> {
    let common = &args.common;
    let setup = Setup::new(common, args.connections)?;
    let plan = EchoPlan {
        size: args.size as usize,
        in_flight: args.in_flight as usize,
        text: !args.binary,
    };
    let run_time = args.warmup + args.duration + ECHO_DRAIN_TIMEOUT;
    let fleet = Fleet::start(
        &setup,
        args.connections,
        common.rate.per_second(),
        common,
        Some(plan),
        None,
        run_time,
    )?;
    let ramp_end = fleet.ramp(interrupt, common.connect_timeout);
    let mut interrupted = ramp_end == RampEnd::Interrupted;
    let window = fleet.measure(
        args.warmup,
        args.duration,
        interrupt,
        interrupted,
        |t| t.echoes,
        |phase, elapsed, rate, _, t| {
            format!(
                "{phase} {elapsed:>5.1}s  {rate:>9.0} msg/s  in flight {}  open {}",
                t.in_flight, t.open
            )
        },
    );
    let (measure_from, measure_until) = (window.measure_from, window.measure_until);
    interrupted = window.interrupted;
    // Let the last echoes come home.
    let drain_until = Instant::now() + ECHO_DRAIN_TIMEOUT;
    while !interrupted && fleet.totals().in_flight > 0 && Instant::now() < drain_until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (r, missing) = fleet.finish();
    let measured_secs = Duration::from_nanos(measure_until.saturating_sub(measure_from)).as_secs_f64();
    let per_sec = |n: f64| if measured_secs > 0.0 { n / measured_secs } else { 0.0 };
    Ok(EchoReport {
        mode: "echo",
        url: common.url.to_string(),
        workers: setup.workers,
        connections_requested: args.connections,
        established: r.established,
        failures: r.failures,
        ramp_end,
        size_bytes: args.size,
        in_flight: args.in_flight,
        message_type: if args.binary { "binary" } else { "text" },
        warmup_secs: args.warmup.as_secs_f64(),
        duration_secs: args.duration.as_secs_f64(),
        measured_secs,
        messages: r.echo.measured,
        messages_per_sec: per_sec(r.echo.measured as f64),
        payload_bytes_per_sec: per_sec((r.echo.measured * args.size) as f64),
        rtt: Latency::of(&r.echo.rtt_ns),
        sent: r.echo.sent,
        received: r.echo.received,
        unanswered: r.echo.unanswered,
        mismatches: r.echo.mismatches,
        dropped: r.dropped,
        closed_clean: r.closed_clean,
        close_failures: r.close_failures,
        protocol_errors: r.protocol_errors,
        compression_offered: common.compression,
        compression_agreed: r.compression_agreed,
        compressed_messages: r.compressed_messages,
        interrupted,
        hard_deadline_hit: r.hard_deadline_hit || missing > 0,
    })
}
