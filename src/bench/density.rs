//! `wsgate bench density`: how many idle connections the gateway holds, how fast it
//! accepts them, and what each one costs.
//!
//! The coordinator samples memory, starts the workers, waits for the ramp (every
//! connection established or failed), holds for `--hold`, samples memory again with
//! the connections open, closes them all with 1000, and reports.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::host::{HostSample, MemoryReport, Preflight, parse_admin};
use super::worker::PHASE_RUN;
use super::{
    BenchError, CommonArgs, Fleet, Identities, Latency, PROGRESS_INTERVAL, RampEnd, Setup, Table, fmt_bytes, fmt_counts,
};

/// `wsgate bench density ...`.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct DensityArgs {
    /// Connections to open.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub connections: u64,
    /// How long to hold them open once all are established.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = super::duration_arg)]
    pub hold: Duration,
    /// The gateway's process id: its RSS is read from /proc before and after.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// The gateway's admin listener (http://IP:PORT): wsgate_connections and
    /// wsgate_process_resident_memory_bytes are read from /metrics before and after.
    #[arg(long, value_name = "URL", value_parser = parse_admin)]
    pub admin: Option<String>,
    /// Make every connection a user of its own, `PREFIX<n>` (n: the connection's number
    /// in this process): named with `?user=` (a gateway with `--auth-mode none`), or,
    /// with `--token-secret-file`, by a token minted for that user. Processes of one
    /// run need different prefixes.
    #[arg(long, value_name = "PREFIX", conflicts_with = "token")]
    pub user_prefix: Option<String>,
    /// The gateway's HMAC secret file (`--auth-hmac-secret-file`): each connection sends
    /// `Authorization: Bearer` with an HS256 token minted for its `--user-prefix` user.
    #[arg(long, value_name = "FILE", requires = "user_prefix")]
    pub token_secret_file: Option<std::path::PathBuf>,
    /// A file of bearer tokens, one per line: connection n sends line n, so it needs at
    /// least as many lines as connections.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["token", "user_prefix"])]
    pub token_file: Option<std::path::PathBuf>,
    /// Connections opened and closed before the baseline sample, so that the
    /// gateway's one-time costs (the code its first handshakes page in, about 640 KiB
    /// here; its tables' first chunks) are not charged to the connections measured.
    /// With `--user-prefix` their users are `<PREFIX>warmup-<n>`, none of the measured
    /// ones. 0: none, the baseline is the gateway as it stands.
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "token_file")]
    pub warmup: u64,
    /// Options shared with `echo`.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Who each connection is, from `--user-prefix`, `--token-secret-file` and
/// `--token-file`; `None` when every connection is the same (or an anonymous) user.
pub fn identities(args: &DensityArgs) -> Result<Option<Identities>, BenchError> {
    let usage = BenchError::Usage;
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path).map_err(|e| usage(format!("--token-file {}: {e}", path.display())))?;
        let tokens: Vec<Box<str>> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(Into::into)
            .collect();
        if (tokens.len() as u64) < args.connections {
            return Err(usage(format!(
                "--token-file {} holds {} tokens; --connections {} needs one per connection",
                path.display(),
                tokens.len(),
                args.connections
            )));
        }
        return Ok(Some(Identities::Tokens(tokens.into())));
    }
    let Some(prefix) = &args.user_prefix else {
        return Ok(None);
    };
    let Some(path) = &args.token_secret_file else {
        return Ok(Some(Identities::Query(prefix.clone())));
    };
    let key = crate::auth::load_key(&crate::auth::MintKey::HmacSecretFile(path.clone()))
        .map_err(|e| usage(format!("--token-secret-file: {e}")))?;
    // Valid for the whole run, however long it holds.
    let lifetime = crate::auth::LIFETIME_RANGE.end().to_owned();
    let now = std::time::SystemTime::now();
    let tokens = (0..args.connections)
        .map(|n| {
            let mut options = crate::auth::MintOptions::new(format!("{prefix}{n}"), key.clone(), now);
            options.lifetime = lifetime;
            crate::auth::mint(&options).map(Into::into)
        })
        .collect::<Result<Vec<Box<str>>, _>>()
        .map_err(|e| usage(format!("--user-prefix/--token-secret-file: {e}")))?;
    Ok(Some(Identities::Tokens(tokens.into())))
}

/// The density report (`--json` prints it as is).
#[derive(Clone, Debug, Serialize)]
pub struct DensityReport {
    /// `"density"`.
    pub mode: &'static str,
    /// The URL connected to.
    pub url: String,
    /// Worker threads used.
    pub workers: usize,
    /// Source addresses used (1: the kernel's choice).
    pub source_addresses: u64,
    /// Connections asked for.
    pub connections_requested: u64,
    /// `--warmup` connections established (and closed) before the baseline.
    pub warmup_connections: u64,
    /// Target connects per second.
    pub rate_target_per_sec: f64,
    /// Connects started.
    pub attempted: u64,
    /// Upgrades completed (101 with the right accept key).
    pub established: u64,
    /// Attempts that failed, all reasons.
    pub failed: u64,
    /// Failed attempts by reason.
    pub failures: BTreeMap<String, u64>,
    /// Attempts cut short or never started (Ctrl-C, ramp limit, hard deadline).
    pub aborted: u64,
    /// Established connections per second over the ramp.
    pub handshakes_per_sec: f64,
    /// From the first connect to the last upgrade, seconds.
    pub ramp_secs: f64,
    /// Time to reach N established, seconds (only when all N were).
    pub time_to_all_secs: Option<f64>,
    /// How the ramp ended.
    pub ramp_end: RampEnd,
    /// connect() to verified 101.
    pub handshake_latency: Option<Latency>,
    /// Hold asked for and held, seconds.
    pub hold_secs: f64,
    /// Hold actually spent (shorter after Ctrl-C).
    pub held_secs: f64,
    /// Connections open when the hold ended.
    pub open_at_end_of_hold: u64,
    /// Connections that ended during the run before we closed them, by how.
    pub dropped: BTreeMap<String, u64>,
    /// Our closes (1000) answered by the server's close and its end of the stream.
    pub closed_clean: u64,
    /// Our closes that did not end cleanly, by reason.
    pub close_failures: BTreeMap<String, u64>,
    /// Protocol errors by the server.
    pub protocol_errors: BTreeMap<String, u64>,
    /// `--compression`: permessage-deflate was offered.
    pub compression_offered: bool,
    /// Upgrades whose 101 agreed to permessage-deflate.
    pub compression_agreed: u64,
    /// Compressed messages received (and inflated).
    pub compressed_messages: u64,
    /// Memory before and with the connections open, per connection.
    pub memory: MemoryReport,
    /// Limits in force.
    pub limits: Preflight,
    /// Ctrl-C ended the run early.
    pub interrupted: bool,
    /// Workers had to stop at the hard deadline (or never reported).
    pub hard_deadline_hit: bool,
}

impl DensityReport {
    /// Whether the run did what was asked: every connection established and held.
    pub fn success(&self) -> bool {
        self.established == self.connections_requested && !self.interrupted && !self.hard_deadline_hit
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
            "source addresses",
            format!(
                "{} × {} ports",
                self.source_addresses,
                self.limits.ports_per_address.map_or("?".to_owned(), |p| p.to_string())
            ),
        );
        t.row(
            "established",
            format!(
                "{} of {} ({} failed, {} aborted)",
                self.established, self.connections_requested, self.failed, self.aborted
            ),
        );
        t.row("failures", fmt_counts(&self.failures));
        if self.warmup_connections > 0 {
            t.row(
                "warm-up",
                format!("{} opened and closed before the baseline", self.warmup_connections),
            );
        }
        t.compression(
            self.compression_offered,
            self.compression_agreed,
            self.established,
            self.compressed_messages,
        );
        t.row(
            "handshakes/s",
            format!(
                "{:.0} (target {:.0})",
                self.handshakes_per_sec, self.rate_target_per_sec
            ),
        );
        t.row(
            "handshake latency",
            self.handshake_latency.map_or("none".to_owned(), |l| l.human()),
        );
        t.row(
            "time to reach N",
            match self.time_to_all_secs {
                Some(s) => format!("{s:.2}s"),
                None => format!("not reached (ramp {:?})", self.ramp_end),
            },
        );
        t.row(
            "held",
            format!(
                "{:.1}s of {:.1}s, {} open at the end",
                self.held_secs, self.hold_secs, self.open_at_end_of_hold
            ),
        );
        t.endings(
            &self.dropped,
            self.closed_clean,
            &self.close_failures,
            &self.protocol_errors,
        );
        memory_rows(&mut t, &self.memory);
        if self.interrupted {
            t.row("note", "interrupted (Ctrl-C): figures cover the run so far");
        }
        if self.hard_deadline_hit {
            t.row("note", "workers stopped at the hard deadline");
        }
        t.print("wsgate bench density");
    }
}

/// The memory section of the table.
pub(crate) fn memory_rows(t: &mut Table, m: &MemoryReport) {
    t.section(&format!("memory, {} connections open", m.connections));
    let rss = |before: Option<u64>, after: Option<u64>, per: Option<f64>| match (before, after) {
        (Some(b), Some(a)) => format!(
            "{} → {}  ({} per connection)",
            fmt_bytes(b as f64),
            fmt_bytes(a as f64),
            per.map_or("?".to_owned(), fmt_bytes)
        ),
        _ => "not read".to_owned(),
    };
    if m.server_rss_before.is_some() || m.server_rss_after.is_some() {
        t.row(
            "server RSS (--server-pid)",
            rss(m.server_rss_before, m.server_rss_after, m.server_rss_per_connection),
        );
    }
    if m.server_anon_before.is_some() || m.server_anon_after.is_some() {
        t.row(
            "  of which anonymous (RssAnon)",
            rss(m.server_anon_before, m.server_anon_after, m.server_anon_per_connection),
        );
    }
    if m.admin_rss_before.is_some() || m.admin_error.is_some() {
        match &m.admin_error {
            Some(e) => t.row("server RSS (--admin)", format!("scrape failed: {e}")),
            None => {
                t.row(
                    "server RSS (--admin)",
                    rss(m.admin_rss_before, m.admin_rss_after, m.admin_rss_per_connection),
                );
                t.row(
                    "server connections (--admin)",
                    format!(
                        "{} → {}",
                        m.admin_connections_before.unwrap_or(0),
                        m.admin_connections_after.unwrap_or(0)
                    ),
                );
            }
        }
    }
    t.row(
        "bench RSS",
        match (m.bench_rss_before, m.bench_rss_ready, m.bench_rss_after) {
            (Some(b), Some(r), Some(a)) => format!(
                "{} → {} with workers ready → {}  ({} per connection)",
                fmt_bytes(b as f64),
                fmt_bytes(r as f64),
                fmt_bytes(a as f64),
                m.bench_rss_per_connection.map_or("?".to_owned(), fmt_bytes)
            ),
            _ => "not read".to_owned(),
        },
    );
    match (m.sockstat_before, m.sockstat_after) {
        (Some(b), Some(a)) => t.row(
            "TCP socket memory (sockstat)",
            format!(
                "{} → {} pages ({} per connection); sockets in use {} → {}, time-wait {}",
                b.mem_pages,
                a.mem_pages,
                m.tcp_mem_bytes_per_connection.map_or("?".to_owned(), fmt_bytes),
                b.inuse,
                a.inuse,
                a.tw
            ),
        ),
        _ => t.row("TCP socket memory (sockstat)", "not read"),
    }
    if let Some(e) = &m.slab_error {
        t.row("slab caches", format!("not read ({e}; needs root)"));
    }
    for s in &m.slabs {
        t.row(
            &format!("slab {}", s.name),
            format!(
                "{} → {} objects × {} B  ({} per connection)",
                s.active_before,
                s.active_after,
                s.objsize,
                fmt_bytes(s.bytes_per_connection)
            ),
        );
    }
    if let Some(total) = m.slab_bytes_per_connection {
        t.row("slab total", format!("{} per connection", fmt_bytes(total)));
    }
    if m.kernel_figures_cover_both_ends {
        t.row(
            "note",
            "loopback: sockstat and slab figures count both ends (client and server socket) of each connection",
        );
    }
    t.row(
        "note",
        "kernel figures are host-wide: other activity on the host shows up in them",
    );
}

/// Opens and closes `--warmup` connections, then waits (up to
/// [`WARMUP_SETTLE_LIMIT`]) for the gateway to count them gone; the number established.
fn warm_up(args: &DensityArgs, interrupt: &AtomicBool) -> Result<u64, BenchError> {
    if args.warmup == 0 {
        return Ok(0);
    }
    let warm = DensityArgs {
        connections: args.warmup,
        user_prefix: args.user_prefix.as_ref().map(|prefix| format!("{prefix}warmup-")),
        ..args.clone()
    };
    let mut setup = Setup::new(&warm.common, warm.connections)?;
    setup.identities = identities(&warm)?.map(Arc::new);
    let rate = warm.common.rate.per_second();
    let fleet = Fleet::start(&setup, warm.connections, rate, &warm.common, None, None, Duration::ZERO)?;
    fleet.ramp(interrupt, warm.common.connect_timeout);
    let (report, _) = fleet.finish();
    let settle_by = Instant::now() + WARMUP_SETTLE_LIMIT;
    while let Some(admin) = args.admin.as_deref()
        && Instant::now() < settle_by
        && super::host::scrape_admin(admin).is_ok_and(|sample| sample.connections > 0)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The shards' next ticks free what the closes left (slots in linger, buffers).
    std::thread::sleep(WARMUP_SETTLE);
    Ok(report.established)
}

/// How long [`warm_up`] waits for the gateway to count the warm-up connections gone.
const WARMUP_SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// How long it then lets the gateway settle before the baseline.
const WARMUP_SETTLE: Duration = Duration::from_millis(500);

/// Runs the density benchmark (without printing).
pub fn run(args: &DensityArgs, interrupt: &AtomicBool) -> Result<DensityReport, BenchError> {
    let common = &args.common;
    let mut setup = Setup::new(common, args.connections)?;
    setup.identities = identities(args)?.map(Arc::new);
    let rate = common.rate.per_second();
    if let Some(pid) = args.server_pid
        && super::host::process_rss_bytes(pid).is_none()
    {
        return Err(BenchError::Usage(format!(
            "--server-pid {pid}: /proc/{pid}/status has no VmRSS (no such process?)"
        )));
    }
    let warmup = warm_up(args, interrupt)?;
    let before = HostSample::take(args.server_pid, args.admin.as_deref());
    let fleet = Fleet::start(&setup, args.connections, rate, common, None, None, args.hold)?;
    let ramp_end = fleet.ramp(interrupt, common.connect_timeout);
    let mut interrupted = ramp_end == RampEnd::Interrupted;
    fleet.set_phase(PHASE_RUN);
    let hold_start = Instant::now();
    if !interrupted {
        let hold_end = hold_start + args.hold;
        loop {
            let now = Instant::now();
            if now >= hold_end {
                break;
            }
            if interrupt.load(std::sync::atomic::Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            let t = fleet.totals();
            fleet.show(&format!(
                "hold {:>5.1}s of {:.1}s  open {}  dropped {}",
                now.duration_since(hold_start).as_secs_f64(),
                args.hold.as_secs_f64(),
                t.open,
                t.established.saturating_sub(t.open)
            ));
            std::thread::sleep(PROGRESS_INTERVAL.min(hold_end - now));
        }
    }
    let held = hold_start.elapsed();
    let open = fleet.totals().open;
    let after = HostSample::take(args.server_pid, args.admin.as_deref());
    let (started_ns, rss_ready) = (fleet.control.ns(fleet.started), fleet.rss_ready);
    let (r, missing) = fleet.finish();
    // From the start of the ramp to the last upgrade.
    let ramp_secs = r.last_established_ns.map_or(0.0, |ns| {
        Duration::from_nanos(ns.saturating_sub(started_ns)).as_secs_f64()
    });
    let failed = r.failures.values().sum();
    Ok(DensityReport {
        mode: "density",
        url: common.url.to_string(),
        workers: setup.workers,
        source_addresses: setup.preflight.source_addresses,
        connections_requested: args.connections,
        warmup_connections: warmup,
        rate_target_per_sec: rate,
        attempted: r.started,
        established: r.established,
        failed,
        failures: r.failures,
        aborted: r.aborted,
        handshakes_per_sec: if ramp_secs > 0.0 {
            r.established as f64 / ramp_secs
        } else {
            0.0
        },
        ramp_secs,
        time_to_all_secs: (r.established == args.connections).then_some(ramp_secs),
        ramp_end,
        handshake_latency: Latency::of(&r.handshake_ns),
        hold_secs: args.hold.as_secs_f64(),
        held_secs: held.as_secs_f64(),
        open_at_end_of_hold: open,
        dropped: r.dropped,
        closed_clean: r.closed_clean,
        close_failures: r.close_failures,
        protocol_errors: r.protocol_errors,
        compression_offered: common.compression,
        compression_agreed: r.compression_agreed,
        compressed_messages: r.compressed_messages,
        memory: MemoryReport::compare(&before, rss_ready, &after, open, setup.all_loopback()),
        limits: setup.preflight,
        interrupted,
        hard_deadline_hit: r.hard_deadline_hit || missing > 0,
    })
}
