//! What the bench reads from the operating system: limits before it starts, and the
//! memory figures it samples before and after opening connections.
//!
//! - [`preflight`]: raises RLIMIT_NOFILE (soft to hard) and checks that the run fits
//!   in the file descriptors and source ports available; if not, the error names the
//!   knob to turn.
//! - [`HostSample::take`]: server RSS (`/proc/PID/status`, or `/metrics` of the admin
//!   listener), the bench's own RSS, TCP socket memory (`/proc/net/sockstat`) and the
//!   slab caches that grow with sockets (`/proc/slabinfo`). Every figure is optional: a
//!   file that cannot be read (slabinfo needs root) leaves its figure out of the report.
//!
//! Kernel figures are host-wide. On loopback both ends of every connection live in the
//! same kernel, so they cover a client socket and a server socket per connection; the
//! report says so.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::Serialize;

/// File descriptors the bench needs beyond one per connection: stdio, four per worker
/// (ring, eventfd, the doorbell pair), `/proc` reads, the admin scrape, slack.
pub const FD_RESERVE_BASE: u64 = 64;
/// File descriptors per worker thread (see [`FD_RESERVE_BASE`]).
pub const FD_RESERVE_PER_WORKER: u64 = 4;
/// Slab caches whose objects a TCP connection allocates (socket, inode, file, dentry,
/// io_uring poll request, buffers); absent caches are skipped. SLUB merges caches of
/// the same object size into one, listed under one of their names, so a cache here can
/// also count objects of another (an io_uring ring also keeps freed `io_kiocb`s cached
/// until the ring is closed).
pub const SLAB_CACHES: &[&str] = &[
    "TCP",
    "TCPv6",
    "request_sock_TCP",
    "tcp_bind_bucket",
    "tcp_bind2_bucket",
    "sock_inode_cache",
    "filp",
    "dentry",
    "io_kiocb",
    "eventpoll_epi",
    "skbuff_head_cache",
];
/// How long an admin scrape may take (connect, request and response together).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest `/metrics` response read (one line per shard and label; megabytes would mean
/// something else answered).
pub const ADMIN_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// What [`preflight`] found: the limits in force for the run.
#[derive(Clone, Debug, Serialize)]
pub struct Preflight {
    /// Soft RLIMIT_NOFILE after raising it.
    pub nofile_soft: u64,
    /// Hard RLIMIT_NOFILE.
    pub nofile_hard: u64,
    /// Ephemeral ports per source address (`ip_local_port_range`), if readable.
    pub ports_per_address: Option<u64>,
    /// Source addresses in use (1 when the kernel picks).
    pub source_addresses: u64,
}

/// Raises the open-files limit and checks that `connections` fit in it and in the
/// source ports. The error says what to change.
pub fn preflight(connections: u64, workers: usize, source_addresses: u64) -> Result<Preflight, String> {
    let (soft, hard) =
        crate::sys::raise_nofile_limit().map_err(|e| format!("cannot read or raise RLIMIT_NOFILE: {e}"))?;
    let found = Preflight {
        nofile_soft: soft,
        nofile_hard: hard,
        ports_per_address: local_port_range().map(|(lo, hi)| u64::from(hi.saturating_sub(lo)) + 1),
        source_addresses,
    };
    check_fit(connections, workers, &found)?;
    Ok(found)
}

/// Whether `connections` fit the limits found; the error names the knob to turn.
pub fn check_fit(connections: u64, workers: usize, limits: &Preflight) -> Result<(), String> {
    let (soft, hard) = (limits.nofile_soft, limits.nofile_hard);
    let needed = connections + FD_RESERVE_BASE + FD_RESERVE_PER_WORKER * workers as u64;
    if needed > soft {
        return Err(format!(
            "{connections} connections need {needed} open files, but this process may open {soft} \
             (RLIMIT_NOFILE soft {soft}, hard {hard}). Raise the limit (ulimit -n, LimitNOFILE= in a \
             systemd unit, nofile in /etc/security/limits.conf; fs.nr_open caps them all; \
             scripts/tune-kernel.sh sets these), or split the run over several bench processes."
        ));
    }
    if let Some(ports) = limits.ports_per_address {
        let addresses = limits.source_addresses;
        let capacity = ports * addresses;
        if connections > capacity {
            return Err(format!(
                "{connections} connections need more source ports than {addresses} source \
                 address(es) × {ports} ports (net.ipv4.ip_local_port_range) = {capacity}. Add source \
                 addresses with --source-ips (on loopback, e.g. --source-ips 127.0.0.2-127.0.0.40), or \
                 widen net.ipv4.ip_local_port_range (scripts/tune-kernel.sh does)."
            ));
        }
    }
    Ok(())
}

/// `net.ipv4.ip_local_port_range` (both bounds inclusive).
pub fn local_port_range() -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// Resident memory of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn process_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status_kib(status, "VmRSS:")
}

/// The anonymous part of a process's RSS (`RssAnon` in /proc/PID/status): its heap,
/// stacks and other private memory, without the pages of its executable and the files
/// it maps (`RssFile`). The first connections of a run page in code paths the process
/// had not run yet (the token check, the owner's handlers): that is a fixed cost of the
/// binary, not of a connection, and at 10,000 connections it was 65 B of the RSS
/// figure per connection.
pub fn process_anon_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "RssAnon:")
}

fn status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The TCP line of `/proc/net/sockstat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SockStat {
    /// Sockets in use (established and others).
    pub inuse: u64,
    /// Sockets allocated.
    pub alloc: u64,
    /// Sockets in TIME_WAIT.
    pub tw: u64,
    /// Pages of socket buffer memory charged to TCP (`mem`).
    pub mem_pages: u64,
}

impl SockStat {
    /// Reads `/proc/net/sockstat` (IPv4 and IPv6 TCP sockets share this line's `mem`).
    pub fn read() -> Option<Self> {
        parse_sockstat(&std::fs::read_to_string("/proc/net/sockstat").ok()?)
    }
}

fn parse_sockstat(text: &str) -> Option<SockStat> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> Option<u64> {
        let i = words.iter().position(|w| *w == name)?;
        words.get(i + 1)?.parse().ok()
    };
    Some(SockStat {
        inuse: field("inuse")?,
        alloc: field("alloc").unwrap_or(0),
        tw: field("tw").unwrap_or(0),
        mem_pages: field("mem")?,
    })
}

/// One slab cache from `/proc/slabinfo`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlabCache {
    /// Cache name.
    pub name: String,
    /// Objects in use.
    pub active_objs: u64,
    /// Objects allocated (in use or free in a slab).
    pub num_objs: u64,
    /// Bytes per object.
    pub objsize: u64,
}

/// Reads the caches named in [`SLAB_CACHES`] (reading slabinfo needs root).
pub fn read_slabs() -> Result<Vec<SlabCache>, String> {
    let text = std::fs::read_to_string("/proc/slabinfo").map_err(|e| format!("/proc/slabinfo: {e}"))?;
    Ok(parse_slabinfo(&text, SLAB_CACHES))
}

fn parse_slabinfo(text: &str, names: &[&str]) -> Vec<SlabCache> {
    let mut found = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        if !names.contains(&name) {
            continue;
        }
        let numbers: Vec<u64> = words.take(3).filter_map(|w| w.parse().ok()).collect();
        if let [active_objs, num_objs, objsize] = numbers[..] {
            found.push(SlabCache {
                name: name.to_owned(),
                active_objs,
                num_objs,
                objsize,
            });
        }
    }
    // In the order of `names`, so reports list the caches the same way every time.
    found.sort_by_key(|c| names.iter().position(|n| *n == c.name));
    found
}

/// What the gateway's `/metrics` says about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AdminSample {
    /// `wsgate_connections`, summed over shards.
    pub connections: u64,
    /// `wsgate_process_resident_memory_bytes`, if reported.
    pub rss_bytes: Option<u64>,
}

/// `--admin`: `http://IP:PORT` or `IP:PORT` of the gateway's admin listener.
pub fn parse_admin(text: &str) -> Result<String, String> {
    let rest = text.trim().strip_prefix("http://").unwrap_or(text.trim());
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err("the admin listener as http://IP:PORT (https is not served there)".to_owned());
    }
    if !authority.contains(':') || authority.ends_with(']') {
        return Err(format!("{authority}: give the port too, e.g. http://127.0.0.1:9090"));
    }
    Ok(authority.to_owned())
}

/// Scrapes `GET /metrics` from the admin listener at `authority` (`host:port`).
pub fn scrape_admin(authority: &str) -> Result<AdminSample, String> {
    let addr: SocketAddr = authority
        .to_socket_addrs()
        .map_err(|e| format!("admin {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("admin {authority}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, ADMIN_TIMEOUT).map_err(|e| format!("admin {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(ADMIN_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(ADMIN_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("admin {addr}: {e}"))?;
    let mut body = Vec::new();
    stream
        .take(ADMIN_MAX_RESPONSE_BYTES as u64)
        .read_to_end(&mut body)
        .map_err(|e| format!("admin {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&body);
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        let status = text.lines().next().unwrap_or("no response");
        return Err(format!("admin {addr}/metrics: {status}"));
    }
    Ok(parse_metrics(&text))
}

fn parse_metrics(text: &str) -> AdminSample {
    let mut sample = AdminSample::default();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or_default();
        match name {
            "wsgate_connections" => sample.connections += value as u64,
            "wsgate_process_resident_memory_bytes" => sample.rss_bytes = Some(value as u64),
            _ => {}
        }
    }
    sample
}

/// Everything sampled at one instant.
#[derive(Clone, Debug, Default)]
pub struct HostSample {
    /// RSS of `--server-pid`.
    pub server_rss: Option<u64>,
    /// The anonymous part of that RSS ([`process_anon_rss_bytes`]).
    pub server_anon: Option<u64>,
    /// `/metrics` of `--admin` (or why the scrape failed).
    pub admin: Option<Result<AdminSample, String>>,
    /// The bench's own RSS.
    pub bench_rss: Option<u64>,
    /// `/proc/net/sockstat`, TCP line.
    pub sockstat: Option<SockStat>,
    /// `/proc/slabinfo`, the caches of [`SLAB_CACHES`] (or why it could not be read).
    pub slabs: Option<Result<Vec<SlabCache>, String>>,
}

impl HostSample {
    /// Samples what the options ask for; the bench's RSS and the kernel figures always.
    pub fn take(server_pid: Option<u32>, admin: Option<&str>) -> Self {
        Self {
            server_rss: server_pid.and_then(process_rss_bytes),
            server_anon: server_pid.and_then(process_anon_rss_bytes),
            admin: admin.map(scrape_admin),
            bench_rss: crate::sys::rss_bytes(),
            sockstat: SockStat::read(),
            slabs: Some(read_slabs()),
        }
    }
}

/// One slab cache's growth over the run.
#[derive(Clone, Debug, Serialize)]
pub struct SlabDelta {
    /// Cache name.
    pub name: String,
    /// Bytes per object.
    pub objsize: u64,
    /// Objects in use before connections were opened.
    pub active_before: u64,
    /// Objects in use with the connections open.
    pub active_after: u64,
    /// `(after - before) × objsize / connections`, in bytes (negative when the cache
    /// shrank, e.g. dentries reclaimed meanwhile).
    pub bytes_per_connection: f64,
}

/// Memory before and after, per connection held.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryReport {
    /// Connections open when the "after" sample was taken (the divisor).
    pub connections: u64,
    /// RSS of `--server-pid` before and after, and the difference per connection.
    pub server_rss_before: Option<u64>,
    /// See `server_rss_before`.
    pub server_rss_after: Option<u64>,
    /// See `server_rss_before`.
    pub server_rss_per_connection: Option<f64>,
    /// The anonymous part of the server's RSS (heap, slab, stacks; without the pages of
    /// the executable, see [`process_anon_rss_bytes`]) before and after, per connection.
    pub server_anon_before: Option<u64>,
    /// See `server_anon_before`.
    pub server_anon_after: Option<u64>,
    /// See `server_anon_before`.
    pub server_anon_per_connection: Option<f64>,
    /// `wsgate_connections` from `--admin`, before and after.
    pub admin_connections_before: Option<u64>,
    /// See `admin_connections_before`.
    pub admin_connections_after: Option<u64>,
    /// `wsgate_process_resident_memory_bytes` from `--admin`, before and after.
    pub admin_rss_before: Option<u64>,
    /// See `admin_rss_before`.
    pub admin_rss_after: Option<u64>,
    /// Admin RSS difference per connection the server counted.
    pub admin_rss_per_connection: Option<f64>,
    /// Why an admin scrape failed, if one did.
    pub admin_error: Option<String>,
    /// The bench process's RSS before it started its workers.
    pub bench_rss_before: Option<u64>,
    /// The bench's RSS with its workers started (rings, slabs, histograms), before the
    /// first connect: the fixed cost of the bench.
    pub bench_rss_ready: Option<u64>,
    /// The bench's RSS with the connections open.
    pub bench_rss_after: Option<u64>,
    /// `(after - ready) / connections`: what a client connection costs the bench.
    pub bench_rss_per_connection: Option<f64>,
    /// `/proc/net/sockstat` TCP line before and after.
    pub sockstat_before: Option<SockStat>,
    /// See `sockstat_before`.
    pub sockstat_after: Option<SockStat>,
    /// TCP socket buffer memory (sockstat `mem` pages × page size) per connection.
    pub tcp_mem_bytes_per_connection: Option<f64>,
    /// Slab caches' growth per connection.
    pub slabs: Vec<SlabDelta>,
    /// Sum of the slab caches' growth per connection.
    pub slab_bytes_per_connection: Option<f64>,
    /// Why slabinfo could not be read, if it could not.
    pub slab_error: Option<String>,
    /// Whether the kernel figures cover both ends (the server is on loopback).
    pub kernel_figures_cover_both_ends: bool,
}

impl MemoryReport {
    /// Compares two samples over `connections` connections.
    pub fn compare(
        before: &HostSample,
        bench_rss_ready: Option<u64>,
        after: &HostSample,
        connections: u64,
        loopback: bool,
    ) -> Self {
        let per = |b: Option<u64>, a: Option<u64>| -> Option<f64> {
            let (b, a) = (b?, a?);
            (connections > 0).then(|| (a as f64 - b as f64) / connections as f64)
        };
        let admin_ok = |s: &HostSample| s.admin.as_ref().and_then(|r| r.as_ref().ok()).copied();
        let (admin_b, admin_a) = (admin_ok(before), admin_ok(after));
        let admin_error = [&before.admin, &after.admin]
            .into_iter()
            .find_map(|r| r.as_ref().and_then(|r| r.as_ref().err()).cloned());
        let admin_rss_per_connection = match (admin_b, admin_a) {
            (Some(b), Some(a)) if a.connections > b.connections => {
                let (rb, ra) = (b.rss_bytes, a.rss_bytes);
                rb.zip(ra)
                    .map(|(rb, ra)| (ra as f64 - rb as f64) / (a.connections - b.connections) as f64)
            }
            _ => None,
        };
        let page = crate::sys::page_size().unwrap_or(4096);
        let tcp_mem_bytes_per_connection = per(
            before.sockstat.map(|s| s.mem_pages * page),
            after.sockstat.map(|s| s.mem_pages * page),
        );
        let mut slabs = Vec::new();
        let mut slab_error = None;
        match (&before.slabs, &after.slabs) {
            (Some(Ok(b)), Some(Ok(a))) => {
                for cache in a {
                    let Some(old) = b.iter().find(|c| c.name == cache.name) else {
                        continue;
                    };
                    let grown = (cache.active_objs as f64 - old.active_objs as f64) * cache.objsize as f64;
                    slabs.push(SlabDelta {
                        name: cache.name.clone(),
                        objsize: cache.objsize,
                        active_before: old.active_objs,
                        active_after: cache.active_objs,
                        bytes_per_connection: if connections > 0 {
                            grown / connections as f64
                        } else {
                            0.0
                        },
                    });
                }
            }
            (Some(Err(e)), _) | (_, Some(Err(e))) => slab_error = Some(e.clone()),
            _ => {}
        }
        let slab_bytes_per_connection =
            (!slabs.is_empty() && connections > 0).then(|| slabs.iter().map(|s| s.bytes_per_connection).sum());
        Self {
            connections,
            server_rss_before: before.server_rss,
            server_rss_after: after.server_rss,
            server_rss_per_connection: per(before.server_rss, after.server_rss),
            server_anon_before: before.server_anon,
            server_anon_after: after.server_anon,
            server_anon_per_connection: per(before.server_anon, after.server_anon),
            admin_connections_before: admin_b.map(|a| a.connections),
            admin_connections_after: admin_a.map(|a| a.connections),
            admin_rss_before: admin_b.and_then(|a| a.rss_bytes),
            admin_rss_after: admin_a.and_then(|a| a.rss_bytes),
            admin_rss_per_connection,
            admin_error,
            bench_rss_before: before.bench_rss,
            bench_rss_ready,
            bench_rss_after: after.bench_rss,
            bench_rss_per_connection: per(bench_rss_ready, after.bench_rss),
            sockstat_before: before.sockstat,
            sockstat_after: after.sockstat,
            tcp_mem_bytes_per_connection,
            slabs,
            slab_bytes_per_connection,
            slab_error,
            kernel_figures_cover_both_ends: loopback,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t  1234 kB\n"), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(
            status_kib("VmRSS:\t 9 kB\nRssAnon:\t   512 kB\n", "RssAnon:"),
            Some(512 * 1024)
        );
        let sockstat = "sockets: used 17\nTCP: inuse 3 orphan 0 tw 139 alloc 5 mem 7\nUDP: inuse 0 mem 0\n";
        assert_eq!(
            parse_sockstat(sockstat),
            Some(SockStat {
                inuse: 3,
                alloc: 5,
                tw: 139,
                mem_pages: 7
            })
        );
        let slabinfo = "slabinfo - version: 2.1\n# name <active_objs> ...\n\
            TCPv6                 13     13   2496   13    8 : tunables    0    0    0 : slabdata      1      1      0\n\
            TCP                  107    156   2368   13    8 : tunables    0    0    0 : slabdata     12     12      0\n\
            filp                 648    714    192   21    1 : tunables    0    0    0 : slabdata     34     34      0\n";
        let caches = parse_slabinfo(slabinfo, &["TCP", "TCPv6", "filp"]);
        assert_eq!(caches.len(), 3);
        assert_eq!(caches[0].name, "TCP");
        assert_eq!(
            (caches[0].active_objs, caches[0].num_objs, caches[0].objsize),
            (107, 156, 2368)
        );
        assert_eq!(caches[2].name, "filp");
    }

    #[test]
    fn parses_admin_metrics() {
        let text = "HTTP/1.1 200 OK\r\n\r\n# HELP wsgate_connections x\n# TYPE wsgate_connections gauge\n\
            wsgate_connections{shard=\"0\"} 4\nwsgate_connections{shard=\"1\"} 7\n\
            wsgate_connections_accepted_total{shard=\"0\"} 99\n\
            wsgate_process_resident_memory_bytes 123456\n";
        assert_eq!(
            parse_metrics(text),
            AdminSample {
                connections: 11,
                rss_bytes: Some(123_456)
            }
        );
        assert_eq!(parse_admin("http://127.0.0.1:9090").unwrap(), "127.0.0.1:9090");
        assert_eq!(parse_admin("127.0.0.1:9090/metrics").unwrap(), "127.0.0.1:9090");
        assert!(parse_admin("http://127.0.0.1").is_err());
        assert!(parse_admin("").is_err());
    }

    #[test]
    fn memory_report_divides_by_connections() {
        let before = HostSample {
            server_rss: Some(10_000_000),
            server_anon: Some(6_000_000),
            sockstat: Some(SockStat {
                mem_pages: 10,
                ..SockStat::default()
            }),
            slabs: Some(Ok(vec![SlabCache {
                name: "TCP".into(),
                active_objs: 100,
                num_objs: 130,
                objsize: 2000,
            }])),
            ..HostSample::default()
        };
        let after = HostSample {
            server_rss: Some(12_000_000),
            server_anon: Some(7_500_000),
            sockstat: Some(SockStat {
                mem_pages: 10,
                ..SockStat::default()
            }),
            slabs: Some(Ok(vec![SlabCache {
                name: "TCP".into(),
                active_objs: 2100,
                num_objs: 2200,
                objsize: 2000,
            }])),
            ..HostSample::default()
        };
        let report = MemoryReport::compare(&before, None, &after, 1000, true);
        assert_eq!(report.server_rss_per_connection, Some(2000.0));
        assert_eq!(report.server_anon_per_connection, Some(1500.0));
        assert_eq!(report.tcp_mem_bytes_per_connection, Some(0.0));
        assert_eq!(report.slabs[0].bytes_per_connection, 4000.0);
        assert_eq!(report.slab_bytes_per_connection, Some(4000.0));
        assert!(report.kernel_figures_cover_both_ends);
        assert_eq!(report.bench_rss_per_connection, None);
    }
}
