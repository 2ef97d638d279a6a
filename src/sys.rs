//! What the gateway needs from the operating system before it serves, and what it tells
//! the operator at start-up.
//!
//! `main` calls [`raise_nofile_limit`] first (every connection is a file descriptor),
//! then logs [`log_startup`]: the limits in force, the memory they imply (info events
//! with fields), and the warnings of [`startup_report`] when the machine cannot hold
//! what the configuration promises. The report is computed from the [`Config`] and a
//! few host facts read from `/proc`, so a test can check its arithmetic with made-up
//! facts. [`rss_bytes`] feeds the `/metrics` process
//! gauges.
//!
//! This module calls libc for resource limits and the page size, so it cannot forbid
//! unsafe code; each call has a `// SAFETY:` comment.

use std::io;

use tracing::{info, warn};

use crate::auth::{AuthMode, Authenticator};
use crate::config::{Config, available_cpus};
use crate::units::{format_bytes, format_duration};

/// How often each shard hands its allocator's freed pages back ([`release_free_memory`]).
pub const ALLOCATOR_COLLECT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Hands the calling thread's freed allocator pages back to the operating system.
///
/// mimalloc purges a free page only some milliseconds after it is freed, and only from
/// inside a later allocation or free on the same thread; a shard holding idle
/// connections allocates nothing, so the pages its handshakes freed stayed resident.
/// Each shard calls this from its tick (every [`ALLOCATOR_COLLECT_INTERVAL`]); without
/// `force` it only visits the thread's own pages. Under another global allocator (the
/// tests' counting one) it touches mimalloc's empty heap: a no-op.
pub fn release_free_memory() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// Our own memory per idle upgraded connection (slab slot with the protocol state,
/// timer wheel entry). Measured: 103-106 B of RSS per connection at 10,000 and 19,800
/// idle connections (README, "Measured on this machine"); rounded up for headroom.
pub const CONN_USER_BYTES_ESTIMATE: usize = 128;
/// Kernel memory per idle TCP connection, server side (socket, inode, dentry, file, the
/// io_uring poll entry). Measured: about 3.6-3.75 KB of slab per socket on Linux 6.18. It
/// assumes idle sockets with empty buffers; the small initial tcp_rmem/tcp_wmem in
/// `sysctl/99-wsgate.conf` bound what a burst can add.
pub const CONN_KERNEL_BYTES_ESTIMATE: usize = 3800;
/// File descriptors kept aside from connections regardless of shard count: stdio, the
/// admin listener and its connections, the config file, /proc reads, signal handling.
pub const FD_RESERVE_BASE: u64 = 64;
/// File descriptors kept aside per shard: its listener socket, io_uring, eventfds and
/// timers. With [`FD_RESERVE_BASE`] this is the margin the fd warning adds to
/// `max_connections`.
pub const FD_RESERVE_PER_SHARD: u64 = 8;

/// Sets the soft limit on open files (RLIMIT_NOFILE) to the hard limit, after trying to
/// raise the hard limit to `fs.nr_open` (the kernel's ceiling), and returns the
/// `(soft, hard)` limits now in force.
///
/// Raising the hard limit needs CAP_SYS_RESOURCE; without it the attempt fails with
/// EPERM and the hard limit stays as it is (raise it with `LimitNOFILE=` or
/// `limits.conf` instead). Any other failure is returned.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let nr_open = read_u64("/proc/sys/fs/nr_open");
    let (_, hard) = get_nofile()?;
    if let Some(nr_open) = nr_open.filter(|&n| n > hard) {
        match set_nofile(nr_open, nr_open) {
            Ok(()) => {}
            // EPERM: no CAP_SYS_RESOURCE. EINVAL: nr_open was lowered since we read it.
            // Either way the current hard limit is what we have.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL)) => {}
            Err(e) => return Err(e),
        }
    }
    let (soft, hard) = get_nofile()?;
    // A hard limit of RLIM_INFINITY cannot be a soft limit for files (the kernel refuses
    // anything above nr_open), so aim at nr_open then.
    let target = nr_open.map_or(hard, |n| hard.min(n));
    if soft < target {
        set_nofile(target, hard)?;
    }
    get_nofile()
}

fn get_nofile() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call, which
    // only writes into it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // rlim_t is u64 on 64-bit Linux but 32 bits wide on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    Ok((u64::from(limit.rlim_cur), u64::from(limit.rlim_max)))
}

fn set_nofile(soft: u64, hard: u64) -> io::Result<()> {
    let to_rlim = |n: u64| libc::rlim_t::try_from(n).unwrap_or(libc::RLIM_INFINITY);
    let limit = libc::rlimit {
        rlim_cur: to_rlim(soft),
        rlim_max: to_rlim(hard),
    };
    // SAFETY: `limit` is a valid rlimit that the call only reads.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Resident memory of this process in bytes (`/proc/self/statm` resident pages × page
/// size), or `None` where that file cannot be read.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    resident_pages.checked_mul(page_size()?)
}

/// This machine's host name (`/proc/sys/kernel/hostname`), for the default node id.
pub fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// The memory page size (what `/proc` page counts are multiplied by), or `None` if the
/// system will not say.
pub fn page_size() -> Option<u64> {
    // SAFETY: sysconf reads a system constant; it has no pointer arguments and no
    // preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&n| n > 0)
}

/// A number from a one-number file such as `/proc/sys/fs/nr_open`.
fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Memory the machine (or the cgroup v2 the process is in, when it sets a limit) gives
/// this process, or `None` when neither can be read.
fn memory_available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let total = meminfo.as_deref().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    });
    // "max" (no limit) does not parse and is skipped.
    let cgroup = read_u64("/sys/fs/cgroup/memory.max");
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// File descriptors kept aside from connections for `shards` shards.
pub fn fd_reserve(shards: usize) -> u64 {
    FD_RESERVE_BASE + FD_RESERVE_PER_SHARD * shards as u64
}

/// The memory a configuration implies when it is full, term by term. All estimates:
/// the per-connection figures are [`CONN_USER_BYTES_ESTIMATE`] and
/// [`CONN_KERNEL_BYTES_ESTIMATE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    /// `max_connections × (user + kernel bytes per connection)`.
    pub connections_bytes: u64,
    /// `shards × read_buffer_bytes`: the shard-owned read buffers.
    pub read_buffers_bytes: u64,
    /// Worst case queued for sending: every connection's queue full, or every shard's
    /// budget full, whichever is smaller.
    pub send_queues_bytes: u64,
    /// Every shard at its handshake limit with each request at `max_header_bytes`.
    pub handshakes_bytes: u64,
    /// The sum.
    pub total_bytes: u64,
}

/// The memory budget of `config`; see [`MemoryBudget`].
pub fn memory_budget(config: &Config) -> MemoryBudget {
    let connections = config.max_connections as u64;
    let shards = config.shards as u64;
    let per_connection = (CONN_USER_BYTES_ESTIMATE + CONN_KERNEL_BYTES_ESTIMATE) as u64;
    let connections_bytes = connections.saturating_mul(per_connection);
    let read_buffers_bytes = shards.saturating_mul(config.read_buffer_bytes as u64);
    let send_queues_bytes = connections
        .saturating_mul(config.send_queue_bytes as u64)
        .min(shards.saturating_mul(config.shard_send_budget_bytes as u64));
    let handshakes_bytes = shards
        .saturating_mul(config.max_handshakes_per_shard as u64)
        .saturating_mul(config.limits.max_header_bytes as u64);
    let total_bytes = connections_bytes
        .saturating_add(read_buffers_bytes)
        .saturating_add(send_queues_bytes)
        .saturating_add(handshakes_bytes);
    MemoryBudget {
        connections_bytes,
        read_buffers_bytes,
        send_queues_bytes,
        handshakes_bytes,
        total_bytes,
    }
}

/// What `main` prints before serving.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartupReport {
    /// The limits in force and the memory they imply, one fact per line.
    pub lines: Vec<String>,
    /// Things that will go wrong under full load unless the operator acts, each a whole
    /// sentence saying what to change.
    pub warnings: Vec<String>,
}

/// The start-up report for `config`, given the soft open-files limit in force (from
/// [`raise_nofile_limit`]). Reads the CPU count, memory size and `net.core.somaxconn`
/// of this machine.
pub fn startup_report(config: &Config, nofile_soft: u64) -> StartupReport {
    let host = Host {
        cpus: available_cpus(),
        memory_bytes: memory_available_bytes(),
        somaxconn: read_u64("/proc/sys/net/core/somaxconn"),
    };
    report(config, nofile_soft, &host)
}

/// Facts about the machine the report compares the configuration with.
struct Host {
    /// CPUs available to the process.
    cpus: usize,
    /// Memory the process may use, when known.
    memory_bytes: Option<u64>,
    /// `net.core.somaxconn`, the cap on every listen backlog, when known.
    somaxconn: Option<u64>,
}

fn report(config: &Config, nofile_soft: u64, host: &Host) -> StartupReport {
    let l = &config.limits;
    let budget = memory_budget(config);
    let reserve = fd_reserve(config.shards);
    let list = |items: &[String], empty: &str| {
        if items.is_empty() {
            empty.to_owned()
        } else {
            items.join(",")
        }
    };
    let mut lines = vec![
        format!(
            "listening on {} ({} shards on {} CPUs), admin on {}",
            config.listen, config.shards, host.cpus, config.admin_listen
        ),
        format!(
            "connections: {} max, {} per shard; {} handshakes per shard, handshake timeout {}, backlog {}",
            config.max_connections,
            config.connections_per_shard(),
            config.max_handshakes_per_shard,
            format_duration(config.handshake_timeout),
            config.listen_backlog
        ),
        format!(
            "send queues: {} per connection, {} per shard; read buffer {} per shard",
            format_bytes(config.send_queue_bytes as u64),
            format_bytes(config.shard_send_budget_bytes as u64),
            format_bytes(config.read_buffer_bytes as u64)
        ),
        format!(
            "protocol: frame {} max, message {} max, request headers {} / {} headers, request line {}",
            format_bytes(l.max_frame_bytes),
            format_bytes(l.max_message_bytes),
            format_bytes(l.max_header_bytes as u64),
            l.max_headers,
            format_bytes(l.max_request_line_bytes as u64)
        ),
        format!(
            "timers: ping {}, idle {}, close {}, drain window {} deadline {}, tick {}",
            format_duration(l.ping_interval),
            format_duration(l.idle_timeout),
            format_duration(l.close_timeout),
            format_duration(config.drain_window),
            format_duration(config.drain_timeout),
            format_duration(config.tick)
        ),
        format!(
            "paths {}; origins {}; subprotocols {}; echo {}",
            list(&config.paths, "none"),
            list(&config.allowed_origins, "any"),
            list(&config.subprotocols, "none"),
            if config.echo { "on" } else { "off" }
        ),
        format!(
            "open files: limit {nofile_soft}, needed {} ({} connections + {reserve} reserved)",
            config.max_connections as u64 + reserve,
            config.max_connections
        ),
        format!(
            "memory budget (estimate, all limits full): {}",
            human_bytes(budget.total_bytes)
        ),
        format!(
            "  connections {} = {} x ({} B ours + {} B kernel, estimates)",
            human_bytes(budget.connections_bytes),
            config.max_connections,
            CONN_USER_BYTES_ESTIMATE,
            CONN_KERNEL_BYTES_ESTIMATE
        ),
        format!(
            "  send queues {} (worst case), read buffers {}, handshakes {}",
            human_bytes(budget.send_queues_bytes),
            human_bytes(budget.read_buffers_bytes),
            human_bytes(budget.handshakes_bytes)
        ),
        // The one term no limit bounds per box: each connection may be assembling a
        // fragmented message of up to max_message_bytes. Say so rather than hide it.
        format!(
            "  not included: partly received messages, up to {} per connection",
            format_bytes(l.max_message_bytes)
        ),
    ];
    if let Some(tls) = config.tls_listen_addr() {
        lines.push(format!(
            "  not included: TLS connections (wss on {tls}) cost about {} B more each (rustls state and AEAD keys, measured)",
            crate::tls::SESSION_BYTES_ESTIMATE
        ));
    }

    let mut warnings = Vec::new();
    let needed = config.max_connections as u64 + reserve;
    if nofile_soft < needed {
        warnings.push(format!(
            "this process may open {nofile_soft} files: it can hold about {} connections, not the configured {}; \
             raise the limit with sysctl/limits.conf (LimitNOFILE= in sysctl/wsgate.service under systemd) \
             and fs.nr_open in sysctl/99-wsgate.conf",
            nofile_soft.saturating_sub(reserve),
            config.max_connections
        ));
    }
    if let Some(memory) = host.memory_bytes.filter(|&m| budget.total_bytes > m) {
        warnings.push(format!(
            "the memory budget ({}) exceeds the memory this process may use ({}): under full load it will be \
             killed or swap; lower max_connections, send_queue_bytes or shard_send_budget_bytes",
            human_bytes(budget.total_bytes),
            human_bytes(memory)
        ));
    }
    if config.shards > host.cpus {
        warnings.push(format!(
            "shards ({}) exceed the CPUs available ({}): shards will share cores and add latency; \
             set shards to {} or fewer",
            config.shards, host.cpus, host.cpus
        ));
    }
    if let Some(somaxconn) = host.somaxconn.filter(|&s| u64::from(config.listen_backlog) > s) {
        warnings.push(format!(
            "listen_backlog {} is capped by net.core.somaxconn = {somaxconn}: bursts of new connections \
             beyond that are dropped and retried; raise net.core.somaxconn in sysctl/99-wsgate.conf",
            config.listen_backlog
        ));
    }
    // The welcome and the whole offline queue are queued at once on the first connection.
    let offline = config.msg.offline_max_bytes;
    if !config.echo && offline > config.send_queue_bytes {
        warnings.push(format!(
            "offline_max_bytes ({}) exceeds send_queue_bytes ({}): a user whose offline queue holds more than \
             a send queue is closed as a slow consumer when it connects, and again on every reconnect; keep \
             offline_max_bytes at or under send_queue_bytes",
            human_bytes(offline as u64),
            human_bytes(config.send_queue_bytes as u64)
        ));
    }
    StartupReport { lines, warnings }
}

/// Logs what the gateway is about to run with, before it listens: a few info events
/// with fields (capacity, limits, timers, routing, open files, memory budget,
/// messaging, authentication), then one warning per problem in `report`. No secret is
/// in any of them (`crate::logging`'s tests check).
pub fn log_startup(cfg: &Config, nofile_soft: u64, report: &StartupReport, auth: &Authenticator) {
    let l = &cfg.limits;
    let list = |items: &[String], empty: &str| {
        if items.is_empty() {
            empty.to_owned()
        } else {
            items.join(",")
        }
    };
    info!(
        shards = cfg.shards,
        cpus = available_cpus(),
        max_connections = cfg.max_connections,
        per_shard = cfg.connections_per_shard(),
        handshakes_per_shard = cfg.max_handshakes_per_shard,
        handshake_timeout = %format_duration(cfg.handshake_timeout),
        backlog = cfg.listen_backlog,
        "capacity"
    );
    info!(
        send_queue = %format_bytes(cfg.send_queue_bytes as u64),
        shard_send_budget = %format_bytes(cfg.shard_send_budget_bytes as u64),
        read_buffer = %format_bytes(cfg.read_buffer_bytes as u64),
        frame_max = %format_bytes(l.max_frame_bytes),
        message_max = %format_bytes(l.max_message_bytes),
        header_max = %format_bytes(l.max_header_bytes as u64),
        headers_max = l.max_headers,
        request_line_max = %format_bytes(l.max_request_line_bytes as u64),
        "limits"
    );
    info!(
        ping = %format_duration(l.ping_interval),
        idle = %format_duration(l.idle_timeout),
        close = %format_duration(l.close_timeout),
        drain_window = %format_duration(cfg.drain_window),
        drain_timeout = %format_duration(cfg.drain_timeout),
        tick = %format_duration(cfg.tick),
        "timers"
    );
    info!(
        paths = %list(&cfg.paths, "none"),
        origins = %list(&cfg.allowed_origins, "any"),
        subprotocols = %list(&cfg.subprotocols, "none"),
        echo = cfg.echo,
        "routing"
    );
    let reserved = fd_reserve(cfg.shards);
    info!(
        limit = nofile_soft,
        needed = cfg.max_connections as u64 + reserved,
        reserved,
        "open files"
    );
    let budget = memory_budget(cfg);
    // Not included (no limit bounds them per box): partly received messages, up to
    // `message_max` per connection, and the TLS session of each TLS connection.
    info!(
        total = %human_bytes(budget.total_bytes),
        connections = %human_bytes(budget.connections_bytes),
        send_queues = %human_bytes(budget.send_queues_bytes),
        read_buffers = %human_bytes(budget.read_buffers_bytes),
        handshakes = %human_bytes(budget.handshakes_bytes),
        tls_bytes_per_connection = cfg.tls_listen_addr().map(|_| crate::tls::SESSION_BYTES_ESTIMATE),
        "memory budget (estimate, all limits full)"
    );
    if !cfg.echo {
        let m = &cfg.msg;
        info!(
            store = %cfg.store,
            history_max_messages = m.history_max_messages,
            history_max_bytes = %format_bytes(m.history_max_bytes as u64),
            history_max_age = %format_duration(m.history_max_age),
            offline_max_messages = m.offline_max_messages,
            offline_max_age = %format_duration(m.offline_max_age),
            mesh_ring_depth = m.ring_depth,
            "messaging"
        );
    }
    match auth.mode() {
        AuthMode::Jwt => {
            let algorithms: Vec<String> = auth.allowed_algorithms().iter().map(ToString::to_string).collect();
            info!(
                mode = "jwt",
                keys = auth.key_count(),
                algorithms = %algorithms.join(","),
                "authentication"
            );
        }
        AuthMode::None => warn!(
            mode = "none",
            "authentication off: every client is let in as an anonymous user; for local benchmarks only, \
             never expose this listener"
        ),
    }
    for warning in &report.warnings {
        warn!(reason = %warning, "start-up check");
    }
}

/// `6979321856` → `"6.5 GiB"`: approximate, for reading (one decimal is enough for
/// budgets of whole machines).
fn human_bytes(n: u64) -> String {
    crate::units::human_bytes(n as f64, 1)
}

/// Turns off transparent huge pages for this process. With them, the allocator's arenas
/// grow resident memory in 2 MiB steps, so RSS stops tracking what connections really
/// use (a 10,000-connection slab fits in one huge page) and the memory-per-connection
/// figures operators rely on become noise. The cost is some TLB misses on the
/// connection slab.
pub fn disable_transparent_huge_pages() {
    // SAFETY: prctl with integer arguments only; failure (old kernel) is harmless.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            cpus: 4,
            memory_bytes: Some(64 << 30),
            somaxconn: Some(65_535),
        }
    }

    fn config() -> Config {
        Config {
            shards: 4,
            max_connections: 100_000,
            ..Config::default()
        }
    }

    #[test]
    fn memory_budget_adds_up_the_limits() {
        let budget = memory_budget(&config());
        assert_eq!(
            budget.connections_bytes,
            100_000 * (CONN_USER_BYTES_ESTIMATE + CONN_KERNEL_BYTES_ESTIMATE) as u64
        );
        assert_eq!(budget.read_buffers_bytes, 4 * 64 * 1024);
        // 100k × 256 KiB is more than 4 × 1 GiB, so the shard budgets bound it.
        assert_eq!(budget.send_queues_bytes, 4 << 30);
        assert_eq!(budget.handshakes_bytes, 4 * 1024 * 8 * 1024);
        assert_eq!(
            budget.total_bytes,
            budget.connections_bytes + budget.read_buffers_bytes + budget.send_queues_bytes + budget.handshakes_bytes
        );
        // With few connections, their queues bound it instead.
        let small = Config {
            max_connections: 100,
            ..config()
        };
        assert_eq!(memory_budget(&small).send_queues_bytes, 100 * 256 * 1024);
    }

    #[test]
    fn report_lists_the_limits_and_no_warning_when_everything_fits() {
        let report = report(&config(), 1 << 20, &host());
        assert_eq!(report.warnings, Vec::<String>::new());
        let text = report.lines.join("\n");
        for needle in [
            "(4 shards on 4 CPUs)",
            "connections: 100000 max, 25000 per shard",
            "send queues: 256KiB per connection, 1GiB per shard",
            "frame 1MiB max, message 1MiB max",
            "ping 25s, idle 1m, close 5s, drain window 10s deadline 30s, tick 100ms",
            "open files: limit 1048576, needed 100096 (100000 connections + 96 reserved)",
            "memory budget (estimate, all limits full): 4.4 GiB",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn warns_when_the_fd_limit_cannot_hold_the_connections() {
        let report = report(&config(), 1024, &host());
        assert_eq!(
            report.warnings,
            [
                "this process may open 1024 files: it can hold about 928 connections, not the configured 100000; \
                 raise the limit with sysctl/limits.conf (LimitNOFILE= in sysctl/wsgate.service under systemd) \
                 and fs.nr_open in sysctl/99-wsgate.conf"
            ]
        );
        // Exactly enough: no warning.
        assert!(report_fits(100_000 + 96));
        assert!(!report_fits(100_000 + 95));
    }

    fn report_fits(nofile: u64) -> bool {
        report(&config(), nofile, &host()).warnings.is_empty()
    }

    #[test]
    fn warns_about_memory_cpus_and_backlog() {
        let small_host = Host {
            cpus: 2,
            memory_bytes: Some(1 << 30),
            somaxconn: Some(4096),
        };
        let warnings = report(&config(), 1 << 20, &small_host).warnings;
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(
            warnings[0].starts_with("the memory budget (4.4 GiB) exceeds the memory this process may use (1.0 GiB)")
        );
        assert!(warnings[1].starts_with("shards (4) exceed the CPUs available (2)"));
        assert!(warnings[2].starts_with("listen_backlog 65535 is capped by net.core.somaxconn = 4096"));
        // An offline queue that cannot fit in a send queue.
        let mut big_offline = config();
        big_offline.msg.offline_max_bytes = big_offline.send_queue_bytes + 1;
        let warnings = report(&big_offline, 1 << 20, &host()).warnings;
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert!(warnings[0].starts_with("offline_max_bytes (256.0 KiB) exceeds send_queue_bytes (256.0 KiB)"));
        // Unknown facts give no warning.
        let unknown = Host {
            cpus: 4,
            memory_bytes: None,
            somaxconn: None,
        };
        assert!(report(&config(), 1 << 20, &unknown).warnings.is_empty());
    }

    #[test]
    fn human_bytes_rounds_for_reading() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(4 << 30), "4.0 GiB");
    }

    #[test]
    fn nofile_limit_is_raised_to_the_hard_limit() {
        let (soft_before, _) = get_nofile().unwrap();
        let (soft, hard) = raise_nofile_limit().unwrap();
        assert!(soft >= soft_before && soft <= hard, "soft {soft} hard {hard}");
        assert_eq!(get_nofile().unwrap(), (soft, hard));
    }

    #[test]
    fn rss_is_read_from_proc() {
        let rss = rss_bytes().expect("/proc/self/statm");
        // A test binary is more than a megabyte resident and less than a terabyte.
        assert!(rss > 1 << 20 && rss < 1 << 40, "{rss}");
    }
}
