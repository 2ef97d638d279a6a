//! Limits at the edge: how fast one address may upgrade, how many connections one
//! address may hold, how fast one connection may send, and which address a request
//! really comes from when it arrives through a proxy. (How many connections one user may
//! hold is the user's owner's to count, see `msg::MsgLimits::max_connections_per_user`:
//! the owner's directory names every connection of the user already, so a second table
//! here cost about 50 bytes per user for nothing.)
//!
//! # Where the state lives
//!
//! Per-connection state is one `u64` in the shard's slot (the message-rate clock, see
//! [`MessageRate`]). Per-address state is process-wide in [`Edge`]: a table striped over
//! [`STRIPES`] small mutexes, keyed by a keyed 64-bit hash of the address (IPv6 by its
//! /64). Shards touch it only when a connection upgrades and when it ends, never per
//! message, so the stripes are uncontended in practice and the limits are exact across
//! shards (a per-shard count would let a client that the kernel spreads over N shards
//! hold N times its limit).
//!
//! # Policies
//!
//! | limit | when hit | metric label (`wsgate_edge_limit_hits_total`) |
//! |---|---|---|
//! | upgrades per second per address (token bucket) | 429 + `Retry-After` | `upgrade_rate` |
//! | connections per address | 429 | `connections_per_ip` |
//! | connections per user, `oldest` wins (kept by the owner) | the new connection is closed with 1008 right after its 101 | `connections_per_user` |
//! | connections per user, `newest` wins (kept by the owner) | the user's oldest connection is closed with 1008 | `user_replaced` |
//! | messages per second per connection (GCRA) | close 1008 "message rate exceeded" | `message_rate` |
//! | addresses tracked ([`EdgeConfig::max_tracked_ips`]) | new addresses are let in uncounted (fail open) | `ip_table_full` |
//!
//! Failing open when the address table is full is deliberate: the table only fills when
//! very many distinct addresses connect at once, and refusing every new address then
//! would turn a flood into an outage for everybody. The connection cap, the handshake
//! cap and the auth check still apply to such connections.
#![forbid(unsafe_code)]

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Instant;

use hashbrown::HashMap;

/// Stripes of the address table.
pub const STRIPES: usize = 64;

/// Default [`EdgeConfig::upgrade_rate_per_ip`]: upgrades per second one address may
/// sustain. Generous, because many users can share one address (carrier-grade NAT,
/// offices); it stops one host from hammering the (token-verifying) upgrade path.
pub const DEFAULT_UPGRADE_RATE_PER_IP: u32 = 100;
/// Default [`EdgeConfig::upgrade_burst_per_ip`]: upgrades one address may make at once,
/// e.g. a NAT gateway's users reconnecting together after a network blip.
pub const DEFAULT_UPGRADE_BURST_PER_IP: u32 = 500;
/// Default [`EdgeConfig::max_connections_per_ip`]: 0, no cap. A mobile carrier's NAT
/// address can carry tens of thousands of legitimate users; set a cap when the clients
/// are known not to share addresses.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 0;
/// Default [`EdgeConfig::message_rate`]: messages per second one connection may
/// sustain. A person types far slower; an app syncing receipts stays well under.
pub const DEFAULT_MESSAGE_RATE: u32 = 100;
/// Default [`EdgeConfig::message_burst`]: messages one connection may send at once.
pub const DEFAULT_MESSAGE_BURST: u32 = 200;
/// Default [`EdgeConfig::max_tracked_ips`]: 16 bytes of state per address, about 40 MiB
/// of table at the limit.
pub const DEFAULT_MAX_TRACKED_IPS: u32 = 1_000_000;

/// An address or network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a single
/// address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside the network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = || format!("{s:?} is not an address or network such as 10.0.0.0/8 or 2001:db8::/32");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let addr = IpAddr::from_str(addr).map_err(|_| expected())?.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(expected)?,
        };
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The edge limits (config keys of the same names; 0 turns a limit off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeConfig {
    /// Upgrade requests per second one client address may sustain (token bucket refill).
    pub upgrade_rate_per_ip: u32,
    /// Upgrade requests one address may make in a burst (bucket size).
    pub upgrade_burst_per_ip: u32,
    /// Open connections per client address.
    pub max_connections_per_ip: u32,
    /// Data messages per second one connection may sustain (control frames not counted).
    pub message_rate: u32,
    /// Data messages one connection may send in a burst.
    pub message_burst: u32,
    /// Client addresses tracked for the per-address limits at once.
    pub max_tracked_ips: u32,
    /// Proxies whose `X-Forwarded-For` is believed: the client address is the right-most
    /// entry not in this list. Empty: the header is ignored.
    pub trusted_proxies: Vec<Cidr>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            upgrade_rate_per_ip: DEFAULT_UPGRADE_RATE_PER_IP,
            upgrade_burst_per_ip: DEFAULT_UPGRADE_BURST_PER_IP,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            message_rate: DEFAULT_MESSAGE_RATE,
            message_burst: DEFAULT_MESSAGE_BURST,
            max_tracked_ips: DEFAULT_MAX_TRACKED_IPS,
            trusted_proxies: Vec::new(),
        }
    }
}

impl EdgeConfig {
    /// Every limit off: for benchmarks and tests that open thousands of connections
    /// from one address.
    pub fn off() -> Self {
        Self {
            upgrade_rate_per_ip: 0,
            upgrade_burst_per_ip: 0,
            max_connections_per_ip: 0,
            message_rate: 0,
            message_burst: 0,
            ..Self::default()
        }
    }

    /// Whether per-address state is kept at all.
    pub fn tracks_ips(&self) -> bool {
        self.upgrade_rate_per_ip > 0 || self.max_connections_per_ip > 0
    }

    /// Relations between the keys (ranges are checked by `config`).
    pub fn validate(&self) -> Result<(), String> {
        if self.upgrade_rate_per_ip > 0 && self.upgrade_burst_per_ip == 0 {
            return Err("upgrade_burst_per_ip must be at least 1 when upgrade_rate_per_ip is set".into());
        }
        if self.message_rate > 0 && self.message_burst == 0 {
            return Err("message_burst must be at least 1 when message_rate is set".into());
        }
        Ok(())
    }
}

/// Why the edge refused an upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The address's upgrade bucket is empty: 429 with `Retry-After: secs`.
    UpgradeRate {
        /// Seconds until a token is back (at least 1).
        retry_after_secs: u32,
    },
    /// The address holds `max_connections_per_ip`: 429.
    ConnectionsPerIp,
}

impl Refusal {
    /// The metric label of the limit.
    pub fn label(self) -> &'static str {
        match self {
            Self::UpgradeRate { .. } => "upgrade_rate",
            Self::ConnectionsPerIp => "connections_per_ip",
        }
    }

    /// The text of the 429 response.
    pub fn reason(self) -> &'static str {
        match self {
            Self::UpgradeRate { .. } => "too many upgrades from this address; retry later",
            Self::ConnectionsPerIp => "too many connections from this address",
        }
    }
}

/// An address admitted by [`Edge::admit_ip`], to give back with [`Edge::release_ip`] when
/// its connection ends. `IpTicket::NONE` when nothing was counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpTicket(u64);

impl IpTicket {
    /// Nothing counted: releasing it does nothing.
    pub const NONE: Self = Self(0);

    /// Whether a connection was counted.
    pub fn is_counted(self) -> bool {
        self.0 != 0
    }
}

/// What [`Edge::admit_ip`] decided besides admitting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpAdmission {
    /// Give back when the connection ends (or when a later check refuses it).
    pub ticket: IpTicket,
    /// The address table was full: the address was let in without being counted.
    pub untracked: bool,
}

#[derive(Clone, Copy, Debug)]
struct IpState {
    /// Open connections counted against the address.
    conns: u32,
    /// Upgrade tokens left, as of `at_ms`.
    tokens: f32,
    /// Milliseconds since [`Edge`]'s epoch when `tokens` was computed.
    at_ms: u64,
}

/// One stripe of a table keyed by a 64-bit keyed hash.
type Stripe<V> = Mutex<HashMap<u64, V>>;

/// The process-wide edge tables (see the module docs).
#[derive(Debug)]
pub struct Edge {
    cfg: EdgeConfig,
    hasher: std::hash::RandomState,
    epoch: Instant,
    ips: Box<[Stripe<IpState>]>,
}

impl Edge {
    /// Empty tables for `cfg`.
    pub fn new(cfg: EdgeConfig) -> Self {
        Self {
            cfg,
            hasher: std::hash::RandomState::new(),
            epoch: Instant::now(),
            ips: (0..STRIPES).map(|_| Mutex::default()).collect(),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &EdgeConfig {
        &self.cfg
    }

    /// The client's address: `peer`, or when `peer` is a trusted proxy, the right-most
    /// address of `forwarded_for` (the `X-Forwarded-For` value) that is not a trusted
    /// proxy. An entry that does not parse stops the walk at the last address trusted
    /// so far: a client can prepend anything it likes, so only entries added by trusted
    /// proxies are believed.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let peer = peer.to_canonical();
        let trusted = |ip: IpAddr| self.cfg.trusted_proxies.iter().any(|net| net.contains(ip));
        let Some(header) = forwarded_for else { return peer };
        if !trusted(peer) {
            return peer;
        }
        let mut client = peer;
        for item in header.rsplit(',') {
            let item = item.trim();
            let parsed = IpAddr::from_str(item)
                .or_else(|_| std::net::SocketAddr::from_str(item).map(|a| a.ip()))
                .map(|ip| ip.to_canonical());
            let Ok(ip) = parsed else { return client };
            client = ip;
            if !trusted(ip) {
                return ip;
            }
        }
        client
    }

    fn ip_key(&self, ip: IpAddr) -> u64 {
        // IPv6 clients get a /64 each, so one host cannot dodge its limits by cycling
        // through the addresses of its own prefix.
        let key = match ip.to_canonical() {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => (u128::from(v6) >> 64 << 64) | 1,
        };
        // 0 means "not counted" in a ticket.
        self.hasher.hash_one(key).max(1)
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Takes an upgrade token for `ip` and counts a connection against it. Refused when
    /// its bucket is empty or it holds `max_connections_per_ip`.
    pub fn admit_ip(&self, ip: IpAddr, now: Instant) -> Result<IpAdmission, Refusal> {
        if !self.cfg.tracks_ips() {
            return Ok(IpAdmission {
                ticket: IpTicket::NONE,
                untracked: false,
            });
        }
        let key = self.ip_key(ip);
        let now_ms = self.now_ms(now);
        let (rate, burst) = (
            self.cfg.upgrade_rate_per_ip as f32,
            self.cfg.upgrade_burst_per_ip as f32,
        );
        let mut table = self.ips[(key as usize) % STRIPES]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let stripe_cap = (self.cfg.max_tracked_ips as usize).div_ceil(STRIPES);
        if !table.contains_key(&key) && table.len() >= stripe_cap {
            // Forget addresses with no connection whose bucket has refilled: they are
            // indistinguishable from new ones.
            table.retain(|_, s| s.conns > 0 || refill(s, now_ms, rate, burst) < burst);
            if table.len() >= stripe_cap {
                return Ok(IpAdmission {
                    ticket: IpTicket::NONE,
                    untracked: true,
                });
            }
        }
        let state = table.entry(key).or_insert(IpState {
            conns: 0,
            tokens: burst,
            at_ms: now_ms,
        });
        if self.cfg.upgrade_rate_per_ip > 0 {
            state.tokens = refill(state, now_ms, rate, burst);
            state.at_ms = now_ms;
            if state.tokens < 1.0 {
                let retry_after_secs = ((1.0 - state.tokens) / rate).ceil().max(1.0) as u32;
                return Err(Refusal::UpgradeRate { retry_after_secs });
            }
            state.tokens -= 1.0;
        }
        if self.cfg.max_connections_per_ip > 0 && state.conns >= self.cfg.max_connections_per_ip {
            return Err(Refusal::ConnectionsPerIp);
        }
        state.conns += 1;
        Ok(IpAdmission {
            ticket: IpTicket(key),
            untracked: false,
        })
    }

    /// Gives back a connection counted by [`Edge::admit_ip`].
    pub fn release_ip(&self, ticket: IpTicket) {
        if !ticket.is_counted() {
            return;
        }
        let mut table = self.ips[(ticket.0 as usize) % STRIPES]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(state) = table.get_mut(&ticket.0) {
            state.conns = state.conns.saturating_sub(1);
            // Kept while its bucket refills (a closed connection's upgrade still counts
            // against the rate); swept when the stripe fills up.
            if state.conns == 0 && self.cfg.upgrade_rate_per_ip == 0 {
                table.remove(&ticket.0);
            }
        }
    }

    /// Addresses tracked now (for tests and the memory report).
    pub fn tracked(&self) -> usize {
        entries(&self.ips)
    }
}

fn entries<V>(stripes: &[Stripe<V>]) -> usize {
    stripes
        .iter()
        .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
        .sum()
}

/// Tokens in the bucket at `now_ms`.
fn refill(state: &IpState, now_ms: u64, rate: f32, burst: f32) -> f32 {
    let elapsed = now_ms.saturating_sub(state.at_ms) as f32 / 1000.0;
    (state.tokens + elapsed * rate).min(burst)
}

/// The per-connection message rate as a GCRA (generic cell rate algorithm): one `u64`
/// per connection, the theoretical arrival time of its next message in microseconds
/// since the shard started. Equivalent to a token bucket of `burst` tokens refilled at
/// `rate` per second, without storing the token count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageRate {
    /// Microseconds between messages at the sustained rate.
    interval_us: u64,
    /// How far ahead of now the arrival time may run: `(burst - 1) × interval`.
    tolerance_us: u64,
}

impl MessageRate {
    /// The limit of `cfg`, or `None` when it is off.
    pub fn new(cfg: &EdgeConfig) -> Option<Self> {
        if cfg.message_rate == 0 {
            return None;
        }
        let interval_us = (1_000_000 / u64::from(cfg.message_rate)).max(1);
        Some(Self {
            interval_us,
            tolerance_us: interval_us * u64::from(cfg.message_burst.max(1) - 1),
        })
    }

    /// Whether one more message at `now_us` is within the limit; updates `tat`.
    pub fn allow(&self, tat: &mut u64, now_us: u64) -> bool {
        let start = (*tat).max(now_us);
        if start - now_us > self.tolerance_us {
            return false;
        }
        *tat = start + self.interval_us;
        true
    }
}

/// Microseconds from `epoch` to `now` (the clock [`MessageRate`] runs on).
pub fn micros_since(epoch: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(epoch).as_micros() as u64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn edge(tweak: impl FnOnce(&mut EdgeConfig)) -> Edge {
        let mut cfg = EdgeConfig::off();
        tweak(&mut cfg);
        cfg.validate().unwrap();
        Edge::new(cfg)
    }

    #[test]
    fn cidr_parses_and_matches() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped counts as IPv4");
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        for bad in ["10.0.0.0/33", "::/129", "host", "10.0.0.0/", "10.0.0.0/-1", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!("10.1.0.0/16".parse::<Cidr>().unwrap().to_string(), "10.1.0.0/16");
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let e = edge(|c| c.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()]);
        // Not a trusted peer: the header is ignored.
        assert_eq!(e.client_ip(ip("203.0.113.9"), Some("198.51.100.1")), ip("203.0.113.9"));
        // Trusted peer: right-most untrusted entry.
        assert_eq!(e.client_ip(ip("10.0.0.2"), Some("198.51.100.1")), ip("198.51.100.1"));
        assert_eq!(
            e.client_ip(ip("10.0.0.2"), Some("6.6.6.6, 198.51.100.1, 10.0.0.7")),
            ip("198.51.100.1"),
            "a spoofed left-most entry is not believed"
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            e.client_ip(ip("10.0.0.2"), Some("1.2.3.4, junk, 10.0.0.7")),
            ip("10.0.0.7")
        );
        // All trusted: the left-most.
        assert_eq!(e.client_ip(ip("10.0.0.2"), Some("10.9.9.9, 10.0.0.7")), ip("10.9.9.9"));
        assert_eq!(e.client_ip(ip("10.0.0.2"), None), ip("10.0.0.2"));
        assert_eq!(
            e.client_ip(ip("10.0.0.2"), Some("198.51.100.1:5555")),
            ip("198.51.100.1")
        );
        // No trusted proxies configured: never believed.
        let plain = edge(|_| {});
        assert_eq!(plain.client_ip(ip("10.0.0.2"), Some("1.1.1.1")), ip("10.0.0.2"));
    }

    #[test]
    fn upgrade_bucket_refuses_then_recovers() {
        let e = edge(|c| {
            c.upgrade_rate_per_ip = 10;
            c.upgrade_burst_per_ip = 3;
        });
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            e.admit_ip(a, t0).unwrap();
        }
        assert_eq!(e.admit_ip(a, t0), Err(Refusal::UpgradeRate { retry_after_secs: 1 }));
        // Another address has its own bucket.
        e.admit_ip(ip("192.0.2.2"), t0).unwrap();
        // 100 ms refill one token at 10/s.
        let t1 = t0 + Duration::from_millis(110);
        e.admit_ip(a, t1).unwrap();
        assert!(e.admit_ip(a, t1).is_err());
        // Retry-After rounds up at slow rates.
        let slow = edge(|c| {
            c.upgrade_rate_per_ip = 1;
            c.upgrade_burst_per_ip = 1;
        });
        slow.admit_ip(a, t0).unwrap();
        assert_eq!(slow.admit_ip(a, t0), Err(Refusal::UpgradeRate { retry_after_secs: 1 }));
    }

    /// The recovery half of `server::tests_edge::upgrade_rate_per_address_answers_429_with_retry_after_and_is_counted`,
    /// on a fake clock: at 2/s a token is back after half a second, not before, and
    /// the refused attempts in between do not push the refill back.
    #[test]
    fn upgrade_bucket_refills_at_its_rate_after_a_429() {
        let e = edge(|c| {
            c.upgrade_rate_per_ip = 2;
            c.upgrade_burst_per_ip = 3;
        });
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            e.admit_ip(a, t0).unwrap();
        }
        let refused = Err(Refusal::UpgradeRate { retry_after_secs: 1 });
        assert_eq!(e.admit_ip(a, t0), refused);
        assert_eq!(e.admit_ip(a, t0 + Duration::from_millis(200)), refused);
        assert_eq!(e.admit_ip(a, t0 + Duration::from_millis(400)), refused);
        // 600 ms at 2/s: 1.2 tokens back, so one upgrade and no second.
        let t1 = t0 + Duration::from_millis(600);
        e.admit_ip(a, t1).unwrap();
        assert_eq!(e.admit_ip(a, t1), refused);
        // A long quiet spell refills the burst, never more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            e.admit_ip(a, t2).unwrap();
        }
        assert_eq!(e.admit_ip(a, t2), refused);
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let e = edge(|c| c.max_connections_per_ip = 1);
        let t = Instant::now();
        e.admit_ip(ip("2001:db8:0:1::1"), t).unwrap();
        assert_eq!(e.admit_ip(ip("2001:db8:0:1::2"), t), Err(Refusal::ConnectionsPerIp));
        e.admit_ip(ip("2001:db8:0:2::1"), t).unwrap();
    }

    #[test]
    fn connections_per_ip_are_counted_and_given_back() {
        let e = edge(|c| c.max_connections_per_ip = 2);
        let t = Instant::now();
        let a = ip("192.0.2.1");
        let one = e.admit_ip(a, t).unwrap().ticket;
        let two = e.admit_ip(a, t).unwrap().ticket;
        assert_eq!(e.admit_ip(a, t), Err(Refusal::ConnectionsPerIp));
        e.release_ip(one);
        let three = e.admit_ip(a, t).unwrap().ticket;
        e.release_ip(two);
        e.release_ip(three);
        assert_eq!(
            e.tracked(),
            0,
            "an address with no connection and no rate state is forgotten"
        );
        e.release_ip(IpTicket::NONE);
    }

    #[test]
    fn a_full_address_table_fails_open_and_sweeps_refilled_buckets() {
        let e = edge(|c| {
            c.upgrade_rate_per_ip = 1000;
            c.upgrade_burst_per_ip = 1;
            c.max_tracked_ips = STRIPES as u32; // one address per stripe
        });
        let t0 = Instant::now();
        let mut untracked = 0;
        for i in 0..1000u32 {
            let admission = e.admit_ip(IpAddr::from(i.to_be_bytes()), t0).unwrap();
            if admission.untracked {
                untracked += 1;
            } else {
                e.release_ip(admission.ticket);
            }
        }
        assert!(untracked > 0 && e.tracked() <= STRIPES);
        // Later every bucket has refilled, so new addresses push the old ones out.
        let t1 = t0 + Duration::from_secs(1);
        for i in 1000..1100u32 {
            assert!(!e.admit_ip(IpAddr::from(i.to_be_bytes()), t1).unwrap().untracked || e.tracked() >= STRIPES);
        }
    }

    #[test]
    fn message_rate_allows_the_burst_then_the_rate() {
        let cfg = EdgeConfig {
            message_rate: 10,
            message_burst: 3,
            ..EdgeConfig::off()
        };
        let limit = MessageRate::new(&cfg).unwrap();
        let mut tat = 0;
        let t = 5_000_000;
        assert!((0..3).all(|_| limit.allow(&mut tat, t)));
        assert!(!limit.allow(&mut tat, t));
        // 100 ms later, one more.
        assert!(limit.allow(&mut tat, t + 100_000));
        assert!(!limit.allow(&mut tat, t + 100_000));
        // A long silence gives the whole burst back, never more.
        let later = t + 60_000_000;
        assert!((0..3).all(|_| limit.allow(&mut tat, later)));
        assert!(!limit.allow(&mut tat, later));
        assert!(MessageRate::new(&EdgeConfig::off()).is_none());
    }

    /// The calm client of `server::tests_edge::message_rate_closes_a_flooding_connection_with_1008_and_spares_the_others`,
    /// on a fake clock: at 20/s with a burst of 5, messages 60 ms apart are never
    /// refused, nor are messages exactly at the rate once the burst is spent; a little
    /// faster than the rate is refused once the burst's slack runs out.
    #[test]
    fn message_rate_spaced_at_the_rate_is_never_refused() {
        let cfg = EdgeConfig {
            message_rate: 20,
            message_burst: 5,
            ..EdgeConfig::off()
        };
        let limit = MessageRate::new(&cfg).unwrap();
        let start = 1_000_000;
        let mut tat = 0;
        for i in 0..1000 {
            assert!(limit.allow(&mut tat, start + i * 60_000), "message {i}, 60 ms apart");
        }
        // The whole burst at once, then one every 50 ms (the rate) for ever.
        let mut tat = 0;
        assert!((0..5).all(|_| limit.allow(&mut tat, start)));
        for i in 1..1000 {
            assert!(limit.allow(&mut tat, start + i * 50_000), "message {i} at the rate");
        }
        // 45 ms apart gains 5 ms a message on the rate: the 200 ms of slack a burst of
        // 5 leaves is gone after about 40 messages, and then it is refused.
        let mut tat = 0;
        let refused_at = (0..100u64).find(|i| !limit.allow(&mut tat, start + i * 45_000));
        assert_eq!(refused_at, Some(41));
    }

    #[test]
    fn validation_needs_a_burst_with_a_rate() {
        let mut cfg = EdgeConfig::off();
        cfg.upgrade_rate_per_ip = 5;
        assert!(cfg.validate().is_err());
        cfg.upgrade_burst_per_ip = 5;
        cfg.message_rate = 5;
        assert!(cfg.validate().is_err());
        cfg.message_burst = 1;
        assert!(cfg.validate().is_ok());
        assert!(EdgeConfig::default().validate().is_ok());
    }
}
