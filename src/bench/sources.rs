//! `--source-ips`: the local addresses client sockets are bound to before `connect()`.
//!
//! One source address can reach one server address and port through at most
//! `net.ipv4.ip_local_port_range` ports (about 28,000 by default), so a million
//! connections to one gateway need dozens of source addresses. Connection `k` binds to
//! address `k % count`, round-robin, with `IP_BIND_ADDRESS_NO_PORT` so the kernel picks
//! the port at `connect()` time for the whole 4-tuple. On loopback every `127.x.y.z` is
//! local already; on a real network the addresses must be configured on an interface.
//!
//! Syntax: a comma-separated list of addresses and inclusive ranges,
//! `127.0.0.2-127.0.0.40`, `10.0.0.5,10.0.0.9`, `10.0.0.2-10.0.0.9,10.0.1.1`, IPv6 too
//! (`fd00::2-fd00::ff`). An IPv4 range may abbreviate its end to the last octet:
//! `127.0.0.2-40`.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most addresses one list may name: 65,536 × 28,000 ports is far beyond any one box,
/// and the list is held in memory by every worker.
pub const MAX_SOURCE_ADDRESSES: usize = 65_536;

/// The parsed list, in the order connections use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceIps {
    addrs: Vec<IpAddr>,
}

impl SourceIps {
    /// Parses the list (see the module docs).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut addrs = Vec::new();
        for item in text.split(',').map(str::trim) {
            if item.is_empty() {
                return Err("an empty entry: write addresses or ranges separated by commas".to_owned());
            }
            match item.split_once('-') {
                None => addrs.push(parse_ip(item)?),
                Some((from, to)) => push_range(&mut addrs, from.trim(), to.trim())?,
            }
            if addrs.len() > MAX_SOURCE_ADDRESSES {
                return Err(format!("more than {MAX_SOURCE_ADDRESSES} addresses"));
            }
        }
        let v4 = addrs[0].is_ipv4();
        if addrs.iter().any(|a| a.is_ipv4() != v4) {
            return Err("IPv4 and IPv6 addresses mixed: the server address has one family".to_owned());
        }
        Ok(Self { addrs })
    }

    /// The address connection number `k` binds to.
    pub fn for_connection(&self, k: u64) -> IpAddr {
        self.addrs[(k % self.addrs.len() as u64) as usize]
    }

    /// Number of addresses.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Never true: a parsed list has at least one address.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Whether the addresses are IPv4.
    pub fn is_ipv4(&self) -> bool {
        self.addrs[0].is_ipv4()
    }

    /// The addresses.
    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }
}

impl std::fmt::Display for SourceIps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addrs.as_slice() {
            [one] => write!(f, "{one}"),
            [first, .., last] => write!(f, "{first}..{last} ({} addresses)", self.addrs.len()),
            [] => write!(f, "none"),
        }
    }
}

fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.parse::<IpAddr>()
        .map_err(|_| format!("{text:?} is not an IP address (write 127.0.0.2-127.0.0.40 or a,b,c)"))
}

fn push_range(addrs: &mut Vec<IpAddr>, from: &str, to: &str) -> Result<(), String> {
    let start = parse_ip(from)?;
    let end = match (start, to.parse::<u8>()) {
        // `127.0.0.2-40`: the end's last octet only.
        (IpAddr::V4(s), Ok(last)) => {
            let [a, b, c, _] = s.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, last))
        }
        _ => parse_ip(to)?,
    };
    let room = MAX_SOURCE_ADDRESSES.saturating_sub(addrs.len()) as u128;
    match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => {
            let (s, e) = (u32::from(s), u32::from(e));
            check_order(from, to, u128::from(s), u128::from(e), room)?;
            addrs.extend((s..=e).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
        }
        (IpAddr::V6(s), IpAddr::V6(e)) => {
            let (s, e) = (u128::from(s), u128::from(e));
            check_order(from, to, s, e, room)?;
            addrs.extend((s..=e).map(|n| IpAddr::V6(Ipv6Addr::from(n))));
        }
        _ => return Err(format!("range {from}-{to} mixes IPv4 and IPv6")),
    }
    Ok(())
}

fn check_order(from: &str, to: &str, start: u128, end: u128, room: u128) -> Result<(), String> {
    if end < start {
        return Err(format!("range {from}-{to} ends before it starts"));
    }
    if end - start >= room {
        return Err(format!(
            "range {from}-{to} holds more than {MAX_SOURCE_ADDRESSES} addresses"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_lists_and_singles() {
        let s = SourceIps::parse("127.0.0.2-127.0.0.40").unwrap();
        assert_eq!(s.len(), 39);
        assert_eq!(s.addrs()[0], v4("127.0.0.2"));
        assert_eq!(s.addrs()[38], v4("127.0.0.40"));
        assert_eq!(SourceIps::parse("127.0.0.2-40").unwrap(), s);
        let s = SourceIps::parse("10.0.0.254-10.0.1.1, 10.9.9.9").unwrap();
        let want: Vec<IpAddr> = ["10.0.0.254", "10.0.0.255", "10.0.1.0", "10.0.1.1", "10.9.9.9"]
            .iter()
            .map(|a| v4(a))
            .collect();
        assert_eq!(s.addrs(), want);
        assert_eq!(SourceIps::parse("127.0.0.7").unwrap().addrs(), [v4("127.0.0.7")]);
        let s = SourceIps::parse("fd00::1-fd00::3").unwrap();
        assert_eq!(s.len(), 3);
        assert!(!s.is_ipv4());
        assert_eq!(s.to_string(), "fd00::1..fd00::3 (3 addresses)");
    }

    #[test]
    fn round_robin_by_connection_number() {
        let s = SourceIps::parse("127.0.0.2-127.0.0.4").unwrap();
        let used: Vec<IpAddr> = (0..7).map(|k| s.for_connection(k)).collect();
        assert_eq!(used[0], v4("127.0.0.2"));
        assert_eq!(used[1], v4("127.0.0.3"));
        assert_eq!(used[2], v4("127.0.0.4"));
        assert_eq!(used[3], v4("127.0.0.2"));
        assert_eq!(used[6], v4("127.0.0.2"));
    }

    #[test]
    fn bad_lists_are_refused_with_a_reason() {
        for (bad, says) in [
            ("", "empty"),
            ("127.0.0.1,", "empty"),
            ("nope", "not an IP"),
            ("127.0.0.9-127.0.0.2", "ends before"),
            ("127.0.0.1-::1", "mixes"),
            ("127.0.0.1,::1", "mixed"),
            ("10.0.0.0-10.1.0.0", "more than"),
            ("::-::ffff:ffff", "more than"),
            ("127.0.0.1-300", "not an IP"),
        ] {
            let err = SourceIps::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        // Exactly the maximum is fine.
        assert_eq!(
            SourceIps::parse("10.0.0.0-10.0.255.255").unwrap().len(),
            MAX_SOURCE_ADDRESSES
        );
        assert!(SourceIps::parse("10.0.0.0-10.0.255.255,10.1.0.0").is_err());
    }
}
