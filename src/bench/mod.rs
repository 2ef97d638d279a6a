//! `wsgate bench`: the load generator an operator uses to prove density and speed.
//!
//! - `wsgate bench density`: opens N connections at a target rate (each bound to the
//!   next `--source-ips` address, round-robin), completes the upgrade, holds them idle
//!   (answering pings) for `--hold`, closes them with 1000, and reports handshakes per
//!   second, handshake latency, failures by reason, and memory per connection: server
//!   RSS (`--server-pid` or `--admin`), TCP socket memory and slab caches.
//! - `wsgate bench echo`: C connections each keep K messages in flight against a
//!   gateway started with `--echo`, and report messages per second and round-trip
//!   latency percentiles (HDR histogram), verifying every echoed payload.
//! - `wsgate bench fanout`: S subscribers join one room over `wsgate.v1.json`, P
//!   publishers publish to it at a rate; deliveries per second, publish-to-delivery and
//!   publish-to-last-delivery latency, per-member order. `wsgate bench direct`: pairs of
//!   users `send` to each other; send-to-`msg` and send-to-`ack` latency (`fanout.rs`,
//!   the worker side in `worker/fan.rs`, the message reading in `wire.rs`).
//!
//! - `--compression` (every mode): each upgrade request offers `permessage-deflate;
//!   client_max_window_bits` (RFC 7692); where the 101 agrees, the connection accepts
//!   compressed messages and the worker inflates them (one inflater per worker, no
//!   buffer per connection). The bench's own messages stay uncompressed, which RFC 7692
//!   allows per message. The report counts the agreed connections
//!   (`compression_agreed`).
//!
//! This file is the coordinator of all four modes (arguments, threads, the report and
//! its JSON), 825 lines: the modes share one argument set and one report type, so they
//! are read together; each mode's worker side has a file of its own.
//!
//! # Layout
//!
//! ```text
//!  main thread (coordinator)                     worker threads (one ring each)
//!  ─────────────────────────                     ─────────────────────────────
//!  density.rs / echo.rs: preflight, samples ──►  worker.rs: connect → upgrade → open
//!  Fleet (this file): spawn, phase, progress ◄── Progress counters, every turn
//!  report printing (table or --json)        ◄── WorkerReport at the end, merged
//! ```
//!
//! - `url`, `sources`: the `--url` and `--source-ips` parsers.
//! - `host`: limits before the run (RLIMIT_NOFILE, source ports) and the memory samples.
//! - `worker`: the engine (see its docs for why plain threads and the server's ring).
//!
//! # Bounds
//!
//! Every run stops by itself: each phase has a limit (ramp: N / rate + connect timeout
//! + [`RAMP_SLACK`]; hold or duration as given; close: the close timeout) and every
//!   worker stops at a hard deadline (their sum plus [`HARD_DEADLINE_SLACK`]). Ctrl-C (or
//!   SIGTERM) ends the current phase early and still reports; a second one exits at once.
//!
//! # Exit codes
//!
//! 0: the run completed as asked (density: every connection established; echo: echoes
//! measured, none mismatched, no failed connection; fanout and direct: everyone joined,
//! every window message delivered to every member in order, no error). 1: it ran but fell short (the report
//! says how) or could not start. 2: usage errors and limits that cannot fit the run.

pub mod density;
pub mod echo;
pub mod fanout;
pub mod host;
pub mod sources;
pub mod tls;
pub mod url;
pub mod wire;
pub mod worker;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::units::{human_bytes, human_micros};

use self::sources::SourceIps;
use self::url::{Assign, WsUrl, WsUrls};
use self::worker::{Control, EchoPlan, FanoutPlan, PHASE_CLOSE, Plan, Progress, WorkerReport};

/// Extra time the ramp may take beyond N / rate + the connect timeout before the run
/// moves on without the stragglers (they are counted as aborted).
pub const RAMP_SLACK: Duration = Duration::from_secs(10);
/// Extra time beyond every phase's own limit before workers drop everything.
pub const HARD_DEADLINE_SLACK: Duration = Duration::from_secs(15);
/// How long the coordinator waits for worker reports after the hard deadline.
pub const REPORT_GRACE: Duration = Duration::from_secs(5);
/// How often the coordinator looks at progress (and redraws the progress line).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// Most worker threads (each holds a ring and about 1 MB of histograms and buffers).
pub const MAX_WORKERS: usize = 1024;
/// Most connections one run may ask for (beyond, run several processes).
pub const MAX_CONNECTIONS: u64 = 100_000_000;
/// Highest connect rate accepted, per second.
pub const MAX_RATE_PER_SEC: f64 = 10_000_000.0;

/// `wsgate bench ...`.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The bench's subcommands.
#[derive(Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum BenchCommand {
    /// Open N idle connections at a target rate, hold them, close them; report
    /// handshake speed, failures and memory per connection.
    Density(density::DensityArgs),
    /// Keep K messages in flight on each of C connections against a gateway run with
    /// --echo; report messages per second and round-trip latency.
    Echo(echo::EchoArgs),
    /// S subscribers join one room, P publishers publish to it at a fixed rate (server
    /// speaking wsgate.v1.json); report deliveries per second and publish-to-delivery
    /// latency.
    Fanout(fanout::FanoutArgs),
    /// Pairs of users send to each other at a total rate (server speaking
    /// wsgate.v1.json); report send-to-delivery and send-to-ack latency.
    Direct(fanout::DirectArgs),
}

/// Options every subcommand takes.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct CommonArgs {
    /// The gateway's WebSocket URL, ws:// or wss:// (the host is resolved once), or
    /// several gateways of one fleet, comma-separated (one scheme for all): connection i
    /// goes to URL i % n; fanout spreads subscribers and publishers each round-robin;
    /// direct puts pair i on URLs i % n and (i + 1) % n, so with two or more URLs every
    /// pair spans two gateways.
    #[arg(long, value_name = "URL[,URL...]", default_value = "ws://127.0.0.1:8080/ws", value_parser = WsUrls::parse)]
    pub url: WsUrls,
    /// Sent as `Authorization: Bearer TOKEN` with every upgrade request.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Local addresses to bind before connect, round-robin: 127.0.0.2-127.0.0.40 or
    /// a,b,c. Each address gives ip_local_port_range ports. [default: the kernel picks]
    #[arg(long, value_name = "FROM-TO,...", value_parser = SourceIps::parse)]
    pub source_ips: Option<SourceIps>,
    /// Worker threads, each with its own io_uring. [default: CPUs available]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_WORKERS as i64))]
    pub workers: Option<u32>,
    /// Connects started per second: N, N/s or N/m.
    #[arg(long, value_name = "RATE", default_value = "1000/s", value_parser = Rate::parse)]
    pub rate: Rate,
    /// From connect() to the verified 101; beyond it the attempt fails as a timeout.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration_arg)]
    pub connect_timeout: Duration,
    /// From our close frame to the server's end of the stream.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration_arg)]
    pub close_timeout: Duration,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// wss://: PEM file of the roots to trust for the gateway's certificate.
    #[arg(long, value_name = "FILE", conflicts_with = "tls_insecure")]
    pub ca: Option<std::path::PathBuf>,
    /// wss://: accept any certificate (a throw-away test one); handshake signatures are
    /// still verified, so the server does the full work.
    #[arg(long)]
    pub tls_insecure: bool,
    /// wss://: resume TLS sessions (tickets) on later connections instead of a full
    /// handshake each.
    #[arg(long)]
    pub tls_resume: bool,
    /// Offer permessage-deflate (RFC 7692) in every upgrade request and inflate the
    /// compressed messages of connections where the server agreed. The bench's own
    /// messages are still sent uncompressed (RFC 7692 lets each message choose).
    #[arg(long)]
    pub compression: bool,
}

/// A connect rate: `count` per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Connects...
    pub count: u64,
    /// ... per this long.
    pub per: Duration,
}

impl Rate {
    /// Parses `5000`, `5000/s`, `300/m` ([`crate::units::parse_rate`]), above 0 and at
    /// most [`MAX_RATE_PER_SEC`].
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "a rate like 5000/s, 300/m or 5000 (per second)";
        let rate = crate::units::parse_rate(text).map(|(count, per)| Self { count, per });
        match rate {
            Some(rate) if rate.per_second() <= MAX_RATE_PER_SEC => Ok(rate),
            _ => Err(format!("{expected} (above 0, at most {MAX_RATE_PER_SEC}/s)")),
        }
    }

    /// Connects per second.
    pub fn per_second(self) -> f64 {
        self.count as f64 / self.per.as_secs_f64()
    }
}

/// `10s`, `250ms`, `2m`: the config file's duration syntax.
pub fn duration_arg(text: &str) -> Result<Duration, String> {
    crate::units::parse_duration(text).ok_or_else(|| "a duration with a unit: 250ms, 10s, 2m, 1h".to_owned())
}

/// Why a run did not happen.
#[derive(Debug)]
pub enum BenchError {
    /// Options that cannot work (exit 2).
    Usage(String),
    /// The run does not fit the process's or the host's limits (exit 2); the message
    /// names what to change.
    Limits(String),
    /// Something failed while starting (exit 1).
    Start(String),
}

impl BenchError {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Limits(_) => 2,
            Self::Start(_) => 1,
        }
    }
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(m) | Self::Limits(m) | Self::Start(m) => f.write_str(m),
        }
    }
}

/// Runs `wsgate bench ...`: installs the Ctrl-C handling, runs the subcommand, prints
/// its report.
pub fn run(args: BenchArgs) -> ExitCode {
    // As in the server: without this the allocator's arenas grow RSS in 2 MiB steps and
    // the bench's own memory per connection becomes noise.
    crate::sys::disable_transparent_huge_pages();
    let interrupt = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The second signal exits at once; the first only sets the flag.
        let installed = signal_hook::flag::register_conditional_shutdown(signal, 130, interrupt.clone())
            .and_then(|_| signal_hook::flag::register(signal, interrupt.clone()));
        if let Err(e) = installed {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    }
    let outcome = match &args.command {
        BenchCommand::Density(a) => density::run(a, &interrupt).map(|r| {
            r.print(a.common.json);
            r.success()
        }),
        BenchCommand::Echo(a) => echo::run(a, &interrupt).map(|r| {
            r.print(a.common.json);
            r.success()
        }),
        BenchCommand::Fanout(a) => fanout::run(a, &interrupt).map(|r| {
            r.print(a.common.json);
            r.success()
        }),
        BenchCommand::Direct(a) => fanout::run_direct(a, &interrupt).map(|r| {
            r.print(a.common.json);
            r.success()
        }),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!(error = %e, "bench failed");
            ExitCode::from(e.exit_code())
        }
    }
}

/// One gateway of the run: where to connect and what to send it.
#[derive(Debug)]
pub struct Target {
    /// The resolved address.
    pub addr: SocketAddr,
    /// The upgrade request up to the key (the worker appends the key and `\r\n\r\n`).
    pub request_prefix: Arc<str>,
    /// wss://: the name to verify the certificate against.
    pub server_name: Option<rustls_pki_types::ServerName<'static>>,
}

/// What the workers share with the coordinator, resolved from [`CommonArgs`].
#[derive(Debug)]
pub(crate) struct Setup {
    /// The `--url`s, resolved, in the order given.
    pub targets: Arc<[Target]>,
    /// Which target each connection number goes to.
    pub assign: Assign,
    pub workers: usize,
    pub sources: Option<Arc<SourceIps>>,
    pub preflight: host::Preflight,
    /// The TLS client configuration, for wss://.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Who each connection is (`bench density --user-prefix`, `--token-file`).
    pub identities: Option<Arc<Identities>>,
}

/// Each connection a user of its own (`bench density`).
#[derive(Debug)]
pub enum Identities {
    /// `?user=PREFIX<n>` (a gateway with `--auth-mode none`).
    Query(String),
    /// `Authorization: Bearer` with token n.
    Tokens(Arc<[Box<str>]>),
}

impl Identities {
    /// Appends connection `id`'s upgrade request up to the key to `out`: the target's
    /// `prefix` (which ends with `Sec-WebSocket-Key: `) with its user or token added.
    pub fn request(&self, out: &mut Vec<u8>, prefix: &str, id: u64) {
        match self {
            Self::Query(user_prefix) => worker::request_with_user(out, prefix, user_prefix, "", id),
            Self::Tokens(tokens) => {
                let key_header = prefix.len() - KEY_HEADER.len();
                debug_assert!(prefix.ends_with(KEY_HEADER));
                out.extend_from_slice(&prefix.as_bytes()[..key_header]);
                out.extend_from_slice(b"Authorization: Bearer ");
                out.extend_from_slice(tokens[id as usize % tokens.len()].as_bytes());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(KEY_HEADER.as_bytes());
            }
        }
    }
}

/// The last header of [`request_prefix`], whose value the worker appends.
const KEY_HEADER: &str = "Sec-WebSocket-Key: ";

impl Setup {
    /// Offers `subprotocol` in every upgrade request.
    pub fn offer_subprotocol(&mut self, common: &CommonArgs, subprotocol: &str) {
        let targets = common
            .url
            .list()
            .iter()
            .zip(self.targets.iter())
            .map(|(url, t)| Target {
                addr: t.addr,
                request_prefix: request_prefix(url, common.token.as_deref(), Some(subprotocol), common.compression)
                    .into(),
                server_name: t.server_name.clone(),
            })
            .collect();
        self.targets = targets;
    }

    /// Whether every target is a loopback address.
    pub fn all_loopback(&self) -> bool {
        self.targets.iter().all(|t| t.addr.ip().is_loopback())
    }

    /// Resolves the URLs, checks the source addresses against each and the limits.
    pub fn new(common: &CommonArgs, connections: u64) -> Result<Self, BenchError> {
        if connections == 0 || connections > MAX_CONNECTIONS {
            return Err(BenchError::Usage(format!(
                "--connections must be from 1 to {MAX_CONNECTIONS} (run several processes for more)"
            )));
        }
        let tls = if common.url.tls() {
            let trust = match (&common.ca, common.tls_insecure) {
                (Some(path), _) => tls::Trust::Roots(path.clone()),
                (None, true) => tls::Trust::Insecure,
                (None, false) => {
                    return Err(BenchError::Usage(
                        "wss:// needs --ca FILE (the roots to trust) or --tls-insecure".to_owned(),
                    ));
                }
            };
            Some(tls::client_config(&trust, common.tls_resume).map_err(BenchError::Usage)?)
        } else {
            None
        };
        let mut targets = Vec::with_capacity(common.url.list().len());
        for url in common.url.list() {
            let addr = url.resolve().map_err(BenchError::Usage)?;
            if let Some(sources) = &common.source_ips
                && sources.is_ipv4() != addr.is_ipv4()
            {
                return Err(BenchError::Usage(format!(
                    "--source-ips are {} but {} is {}",
                    if sources.is_ipv4() { "IPv4" } else { "IPv6" },
                    url,
                    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
                )));
            }
            let server_name = if url.tls {
                Some(tls::server_name(url.bare_host()).map_err(BenchError::Usage)?)
            } else {
                None
            };
            targets.push(Target {
                addr,
                request_prefix: request_prefix(url, common.token.as_deref(), None, common.compression).into(),
                server_name,
            });
        }
        let cpus = crate::config::available_cpus();
        let workers = (common.workers.map_or(cpus, |w| w as usize))
            .min(connections as usize)
            .max(1);
        let source_count = common.source_ips.as_ref().map_or(1, |s| s.len() as u64);
        let preflight = host::preflight(connections, workers, source_count).map_err(BenchError::Limits)?;
        Ok(Self {
            targets: targets.into(),
            assign: Assign::RoundRobin,
            workers,
            sources: common.source_ips.clone().map(Arc::new),
            preflight,
            tls,
            identities: None,
        })
    }
}

/// The extension offer `--compression` adds to every upgrade request.
pub const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The upgrade request up to the key (the worker appends the key and `\r\n\r\n`);
/// `compression` offers [`DEFLATE_OFFER`].
fn request_prefix(url: &WsUrl, token: Option<&str>, subprotocol: Option<&str>, compression: bool) -> String {
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nUser-Agent: wsgate-bench/{}\r\n",
        url.target,
        url.host_header(),
        env!("CARGO_PKG_VERSION")
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(subprotocol) = subprotocol {
        request.push_str(&format!("Sec-WebSocket-Protocol: {subprotocol}\r\n"));
    }
    if compression {
        request.push_str(&format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n"));
    }
    request.push_str(KEY_HEADER);
    request
}

/// The running workers, seen from the coordinator.
/// What [`Fleet::measure`] measured: the window, in the fleet's clock, and whether it
/// was cut short.
pub(crate) struct Window {
    pub measure_from: u64,
    pub measure_until: u64,
    pub interrupted: bool,
}

pub(crate) struct Fleet {
    pub control: Arc<Control>,
    progress: Vec<Arc<Progress>>,
    results: mpsc::Receiver<(usize, std::io::Result<WorkerReport>)>,
    threads: Vec<JoinHandle<()>>,
    /// When the ramp started (all workers ready).
    pub started: Instant,
    /// Workers stop at this instant whatever happens.
    pub hard_deadline: Instant,
    /// Connections asked for.
    pub connections: u64,
    /// Target connects per second.
    pub rate: f64,
    /// The bench's RSS once the workers were ready, before the first connect.
    pub rss_ready: Option<u64>,
    /// Draw a progress line: stderr is a terminal (the line goes there, so it never
    /// mixes with the table or the JSON on stdout).
    tty: bool,
}

/// The workers' progress counters, summed.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Totals {
    pub started: u64,
    pub established: u64,
    pub failed: u64,
    pub open: u64,
    pub echoes: u64,
    pub in_flight: u64,
    pub welcomed: u64,
    pub joined: u64,
    pub deliveries: u64,
    pub published: u64,
    pub acked: u64,
    pub done: usize,
}

impl Fleet {
    /// Spawns the workers and starts the ramp once all are ready.
    pub fn start(
        setup: &Setup,
        connections: u64,
        rate: f64,
        common: &CommonArgs,
        echo: Option<EchoPlan>,
        fanout: Option<FanoutPlan>,
        run_time: Duration,
    ) -> Result<Self, BenchError> {
        let control = Arc::new(Control::new());
        let ramp_limit = ramp_limit(connections, rate, common.connect_timeout);
        let hard_deadline = Instant::now() + ramp_limit + run_time + common.close_timeout + HARD_DEADLINE_SLACK;
        let seed = {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ (u64::from(std::process::id()) << 32)
        };
        let workers = setup.workers;
        let barrier = Arc::new(Barrier::new(workers + 1));
        let (tx, rx) = mpsc::channel();
        let mut progress = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        for index in 0..workers {
            let share = connections / workers as u64 + u64::from((index as u64) < connections % workers as u64);
            let plan = Plan {
                index,
                workers,
                connections: share,
                rate: rate * share as f64 / connections as f64,
                targets: setup.targets.clone(),
                assign: setup.assign,
                sources: setup.sources.clone(),
                tls: setup.tls.clone(),
                identities: setup.identities.clone(),
                connect_timeout: common.connect_timeout,
                close_timeout: common.close_timeout,
                hard_deadline,
                seed,
                echo,
                fanout: fanout.clone(),
                compression: common.compression,
            };
            let p = Arc::new(Progress::default());
            progress.push(p.clone());
            let (control, barrier, tx) = (control.clone(), barrier.clone(), tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("wsgate-bench-{index}"))
                .spawn(move || {
                    let readied = std::cell::Cell::new(false);
                    // Two rendezvous: all workers ready (the coordinator samples the
                    // bench's memory), then go.
                    let result = worker::run(plan, control, p.clone(), || {
                        readied.set(true);
                        barrier.wait();
                        barrier.wait();
                    });
                    if !readied.get() {
                        barrier.wait();
                        barrier.wait();
                    }
                    p.done.store(true, Ordering::Release);
                    let _ = tx.send((index, result));
                })
                .map_err(|e| BenchError::Start(format!("cannot start worker {index}: {e}")))?;
            threads.push(thread);
        }
        barrier.wait();
        // Every worker has its ring, slab and histograms now and none has connected yet:
        // what the bench's memory grows by from here is the connections'.
        let rss_ready = crate::sys::rss_bytes();
        barrier.wait();
        let fleet = Self {
            control,
            progress,
            results: rx,
            threads,
            started: Instant::now(),
            hard_deadline,
            connections,
            rate,
            rss_ready,
            tty: std::io::stderr().is_terminal(),
        };
        // A worker that could not make its ring reports at once.
        if fleet.totals().done > 0 {
            fleet.set_phase(PHASE_CLOSE);
            let errors: Vec<String> = fleet
                .results
                .try_iter()
                .filter_map(|(i, r)| r.err().map(|e| format!("worker {i}: {e}")))
                .collect();
            return Err(BenchError::Start(format!(
                "workers failed to start: {}",
                errors.join("; ")
            )));
        }
        Ok(fleet)
    }

    pub fn set_phase(&self, phase: u8) {
        self.control.phase.store(phase, Ordering::Release);
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for p in &self.progress {
            t.started += p.started.load(Ordering::Relaxed);
            t.established += p.established.load(Ordering::Relaxed);
            t.failed += p.failed.load(Ordering::Relaxed);
            t.open += p.open.load(Ordering::Relaxed);
            t.echoes += p.echoes.load(Ordering::Relaxed);
            t.in_flight += p.in_flight.load(Ordering::Relaxed);
            t.welcomed += p.welcomed.load(Ordering::Relaxed);
            t.joined += p.joined.load(Ordering::Relaxed);
            t.deliveries += p.deliveries.load(Ordering::Relaxed);
            t.published += p.published.load(Ordering::Relaxed);
            t.acked += p.acked.load(Ordering::Relaxed);
            t.done += usize::from(p.done.load(Ordering::Acquire));
        }
        t
    }

    /// Waits until every connection is established or failed, the ramp limit passes,
    /// or `interrupt` is set. Returns how the ramp ended.
    pub fn ramp(&self, interrupt: &AtomicBool, connect_timeout: Duration) -> RampEnd {
        let limit = self.started + ramp_limit(self.connections, self.rate, connect_timeout);
        let mut last = (Instant::now(), 0u64);
        let mut shown_rate = 0.0;
        loop {
            let t = self.totals();
            let now = Instant::now();
            if t.established + t.failed >= self.connections {
                return RampEnd::Complete;
            }
            if interrupt.load(Ordering::Relaxed) {
                return RampEnd::Interrupted;
            }
            if now >= limit || t.done == self.progress.len() {
                return RampEnd::TimedOut;
            }
            let span = now.duration_since(last.0).as_secs_f64();
            if span >= 1.0 {
                shown_rate = (t.established - last.1) as f64 / span;
                last = (now, t.established);
            } else if last.1 == 0 && t.established > 0 {
                shown_rate = t.established as f64 / now.duration_since(self.started).as_secs_f64().max(1e-3);
            }
            let left = self.connections - t.established - t.failed;
            let eta = left as f64 / self.rate;
            self.show(&format!(
                "ramp {:>6.1}s  {:>8.0}/s  established {}/{}  failed {}  connecting {}  ETA {:.1}s",
                now.duration_since(self.started).as_secs_f64(),
                shown_rate,
                t.established,
                self.connections,
                t.failed,
                t.started.saturating_sub(t.established + t.failed),
                eta
            ));
            std::thread::sleep(PROGRESS_INTERVAL);
        }
    }

    /// The measured part of a run (echo and fan-out): opens the sending window now,
    /// counts from `warmup` on for `duration`, and closes the window early when
    /// `interrupt` is set (or at once when `interrupted` already is: nothing is sent or
    /// measured then). Every progress interval it shows `line(phase, elapsed, rate,
    /// left, totals)`, `rate` being `count(totals)` per second.
    pub fn measure(
        &self,
        warmup: Duration,
        duration: Duration,
        interrupt: &AtomicBool,
        interrupted: bool,
        count: impl Fn(&Totals) -> u64,
        line: impl Fn(&str, f64, f64, Duration, &Totals) -> String,
    ) -> Window {
        let control = &self.control;
        let start = Instant::now();
        let send_from = control.now_ns();
        let measure_from = send_from + warmup.as_nanos() as u64;
        let mut measure_until = measure_from + duration.as_nanos() as u64;
        let mut interrupted = interrupted;
        if interrupted {
            measure_until = measure_from;
        }
        control.measure_from_ns.store(measure_from, Ordering::Release);
        control.measure_until_ns.store(measure_until, Ordering::Release);
        control.send_from_ns.store(send_from, Ordering::Release);
        self.set_phase(worker::PHASE_RUN);
        let mut last = (start, 0u64);
        let mut shown_rate = 0.0;
        while !interrupted {
            let now = Instant::now();
            let now_ns = control.now_ns();
            if now_ns >= measure_until {
                break;
            }
            if interrupt.load(Ordering::Relaxed) {
                interrupted = true;
                // Workers stop sending and counting from here.
                measure_until = now_ns.max(measure_from);
                control.measure_until_ns.store(measure_until, Ordering::Release);
                break;
            }
            let t = self.totals();
            let span = now.duration_since(last.0).as_secs_f64();
            if span >= 0.5 {
                shown_rate = count(&t).saturating_sub(last.1) as f64 / span;
                last = (now, count(&t));
            }
            let phase = if now_ns < measure_from { "warm-up" } else { "measure" };
            let left = Duration::from_nanos(measure_until - now_ns);
            self.show(&line(
                phase,
                now.duration_since(start).as_secs_f64(),
                shown_rate,
                left,
                &t,
            ));
            std::thread::sleep(PROGRESS_INTERVAL.min(left));
        }
        Window {
            measure_from,
            measure_until,
            interrupted,
        }
    }

    /// Draws the progress line (terminal only).
    pub fn show(&self, line: &str) {
        if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        }
    }

    /// Clears the progress line.
    pub fn clear_line(&self) {
        if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }

    /// Closes everything and collects the workers' reports (merged). Workers that have
    /// not reported by the hard deadline plus [`REPORT_GRACE`] are left behind and
    /// counted in the second value.
    pub fn finish(self) -> (WorkerReport, usize) {
        self.set_phase(PHASE_CLOSE);
        let mut merged = WorkerReport::empty();
        let mut missing = self.progress.len();
        let until = self.hard_deadline + REPORT_GRACE;
        while missing > 0 {
            let t = self.totals();
            self.show(&format!("closing: {} open", t.open));
            let wait = until.saturating_duration_since(Instant::now()).min(PROGRESS_INTERVAL);
            match self.results.recv_timeout(wait) {
                Ok((_, Ok(report))) => {
                    merged.merge(&report);
                    missing -= 1;
                }
                Ok((i, Err(e))) => {
                    tracing::warn!(worker = i, error = %e, "worker failed");
                    missing -= 1;
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < until => {}
                Err(_) => break,
            }
        }
        self.clear_line();
        if missing == 0 {
            for thread in self.threads {
                let _ = thread.join();
            }
        }
        (merged, missing)
    }
}

/// How a ramp ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RampEnd {
    /// Every attempt resolved.
    Complete,
    /// Ctrl-C.
    Interrupted,
    /// The ramp limit passed with attempts unresolved.
    TimedOut,
}

/// Longest the ramp may take: N / rate, the last attempt's connect timeout, slack.
pub fn ramp_limit(connections: u64, rate: f64, connect_timeout: Duration) -> Duration {
    Duration::from_secs_f64(connections as f64 / rate) + connect_timeout + RAMP_SLACK
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Latency {
    /// Summarises a histogram of nanoseconds; `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Self {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        })
    }

    /// `p50 41µs  p99 120µs  p99.9 310µs  max 1.2ms`.
    pub fn human(&self) -> String {
        format!(
            "p50 {}  p99 {}  p99.9 {}  max {}  (mean {}, n={})",
            human_micros(self.p50_us),
            human_micros(self.p99_us),
            human_micros(self.p999_us),
            human_micros(self.max_us),
            human_micros(self.mean_us),
            self.count
        )
    }
}

/// Bytes as `812 B`, `2.40 KiB`, `1.20 GiB` (negative allowed): two decimals, as
/// per-connection figures of a few KiB need them.
pub fn fmt_bytes(bytes: f64) -> String {
    human_bytes(bytes, 2)
}

/// `a 3, b 1` for a map of counts (largest first), or `none`.
pub fn fmt_counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    let mut items: Vec<(&String, &u64)> = map.iter().collect();
    items.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    items
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A two-column table on stdout.
pub(crate) struct Table {
    rows: Vec<(String, String)>,
}

impl Table {
    pub fn new() -> Self {
        Self { rows: Vec::new() }
    }

    /// How the connections ended: the rows every bench report shares.
    pub fn endings(
        &mut self,
        dropped: &BTreeMap<String, u64>,
        closed_clean: u64,
        close_failures: &BTreeMap<String, u64>,
        protocol_errors: &BTreeMap<String, u64>,
    ) {
        self.row("dropped during the run", fmt_counts(dropped));
        self.row(
            "closed cleanly (1000)",
            format!("{closed_clean} (failures: {})", fmt_counts(close_failures)),
        );
        if !protocol_errors.is_empty() {
            self.row("protocol errors", fmt_counts(protocol_errors));
        }
    }

    /// The `--compression` row: off, or on how many connections the server agreed.
    pub fn compression(&mut self, offered: bool, agreed: u64, established: u64, messages: u64) {
        let value = if offered {
            format!("offered; agreed on {agreed} of {established} connections, {messages} compressed messages received")
        } else {
            "not offered".to_owned()
        };
        self.row("compression", value);
    }

    pub fn row(&mut self, label: &str, value: impl Into<String>) {
        self.rows.push((label.to_owned(), value.into()));
    }

    pub fn section(&mut self, title: &str) {
        self.rows.push((String::new(), String::new()));
        self.rows.push((format!("{title}:"), String::new()));
    }

    pub fn print(&self, title: &str) {
        let width = self.rows.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{title}");
        for (label, value) in &self.rows {
            if label.is_empty() {
                let _ = writeln!(out);
            } else if value.is_empty() {
                let _ = writeln!(out, "{label}");
            } else {
                let _ = writeln!(out, "  {label:<width$}  {value}");
            }
        }
    }
}

/// Prints `value` as one line of JSON on stdout.
pub(crate) fn print_json(value: &impl Serialize) {
    match serde_json::to_string(value) {
        Ok(text) => println!("{text}"),
        Err(e) => tracing::error!(error = %e, "cannot render the report as json"),
    }
}

#[cfg(test)]
mod tests;
