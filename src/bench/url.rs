//! The `--url` of the server under test: `ws://` or `wss://host[:port][/path][?query]`.
//!
//! Parsed once at start-up into what the workers need: the socket address to connect
//! to (the host is resolved once, here, so no worker ever waits on DNS), the `Host`
//! header and the request target (path and query) of the upgrade request, and whether
//! the connection is TLS (`wss://`, measured against the gateway's own TLS listener).
//!
//! `--url` may list several gateways of one fleet, comma-separated ([`WsUrls`]): each is
//! resolved once, and [`Assign`] says which one connection number `id` goes to.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Longest URL accepted: the request target must fit the server's request line limit
/// (4 KiB by default) anyway.
pub const MAX_URL_BYTES: usize = 4096;

/// Most URLs one `--url` may list.
pub const MAX_URLS: usize = 1024;

/// `--url`: one or more gateways, comma-separated, all `ws://` or all `wss://`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsUrls(Vec<WsUrl>);

impl WsUrls {
    /// Parses `URL[,URL...]`: each as [`WsUrl::parse`], at least one, at most
    /// [`MAX_URLS`], one scheme for all (one TLS setting serves the whole run).
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.contains(',') {
            return WsUrl::parse(text).map(Self::one);
        }
        let mut urls = Vec::new();
        for (i, part) in text.split(',').enumerate() {
            if part.trim().is_empty() {
                return Err(format!("URL {} of the list is empty: ws://a:1/ws,ws://b:2/ws", i + 1));
            }
            if i >= MAX_URLS {
                return Err(format!("at most {MAX_URLS} URLs"));
            }
            let url = WsUrl::parse(part).map_err(|e| if i == 0 { e } else { format!("URL {}: {e}", i + 1) })?;
            urls.push(url);
        }
        if urls.iter().any(|u| u.tls != urls[0].tls) {
            return Err("all URLs must have the same scheme (all ws:// or all wss://)".to_owned());
        }
        Ok(Self(urls))
    }

    /// One URL.
    pub fn one(url: WsUrl) -> Self {
        Self(vec![url])
    }

    /// The URLs, in the order given.
    pub fn list(&self) -> &[WsUrl] {
        &self.0
    }

    /// `wss://` (all of them, or none).
    pub fn tls(&self) -> bool {
        self.0[0].tls
    }
}

impl std::fmt::Display for WsUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, url) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{url}")?;
        }
        Ok(())
    }
}

/// Which of `n` URLs connection number `id` goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assign {
    /// Connection `id` to URL `id % n` (density, echo).
    RoundRobin,
    /// Fan-out: publishers (ids below `publishers`) round-robin over the URLs from the
    /// first, subscribers (the other ids) too, each role on its own count.
    Fanout {
        /// Connection numbers below this are publishers.
        publishers: u64,
    },
    /// Direct: pair `i` is connections `2i` and `2i + 1`; the first goes to URL `i % n`,
    /// the second to `(i + 1) % n`, so with two URLs or more every pair spans two
    /// gateways.
    DirectPairs,
}

impl Assign {
    /// The index of connection `id`'s URL among `n` (`n` at least 1).
    pub fn target(self, id: u64, n: usize) -> usize {
        let n = n.max(1) as u64;
        let index = match self {
            Self::RoundRobin => id % n,
            Self::Fanout { publishers } if id < publishers => id % n,
            Self::Fanout { publishers } => (id - publishers) % n,
            Self::DirectPairs => (id / 2 + id % 2) % n,
        };
        index as usize
    }
}

/// A parsed `ws://` or `wss://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsUrl {
    /// `wss://`: TLS before the upgrade.
    pub tls: bool,
    /// Host as written (an IP literal keeps its brackets for IPv6), for `Host:`.
    pub host: String,
    /// Port given, or 80 (443 for `wss://`).
    pub port: u16,
    /// Request target: path (at least `/`) and `?query` if any.
    pub target: String,
}

impl WsUrl {
    /// Parses `ws[s]://host[:port][/path][?query]` (no user info, no fragment).
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if url.len() > MAX_URL_BYTES {
            return Err(format!("the URL is longer than {MAX_URL_BYTES} bytes"));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err("a URL like ws://127.0.0.1:8080/ws".to_owned());
        };
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "ws" => false,
            "wss" => true,
            other => return Err(format!("scheme {other:?}: only ws:// and wss:// are supported")),
        };
        if rest.contains('#') {
            return Err("a URL with no #fragment".to_owned());
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err("a URL with no user@ part (use --token for credentials)".to_owned());
        }
        let (host, port) = split_host_port(authority, if tls { 443 } else { 80 })?;
        let target = match target {
            "" => "/".to_owned(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_owned(),
        };
        if !target.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a path and query of printable ASCII with no spaces (percent-encode the rest)".to_owned());
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            target,
        })
    }

    /// The `Host` header value: the host, and the port unless it is the scheme's default.
    pub fn host_header(&self) -> String {
        if self.port == self.default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn default_port(&self) -> u16 {
        if self.tls { 443 } else { 80 }
    }

    /// The host without IPv6 brackets: the TLS server name (a DNS name or an IP).
    pub fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Resolves the host (an IP literal without a lookup), preferring IPv4.
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let addrs: Vec<SocketAddr> = (bare, self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {bare}: {e}"))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .ok_or_else(|| format!("{bare} resolves to no address"))
    }
}

impl std::fmt::Display for WsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "wss" } else { "ws" };
        write!(f, "{scheme}://{}{}", self.host_header(), self.target)
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(authority: &str, default_port: u16) -> Result<(&str, u16), String> {
    let bad_port = |p: &str| format!("port {p:?}: a number from 1 to 65535");
    let parse_port = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| bad_port(p));
    let (host, port) = if authority.starts_with('[') {
        let Some(end) = authority.find(']') else {
            return Err("an IPv6 host in brackets: ws://[::1]:8080/ws".to_owned());
        };
        let (host, rest) = authority.split_at(end + 1);
        if host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host} is not an IPv6 address"));
        }
        match rest {
            "" => (host, default_port),
            r if r.starts_with(':') => (host, parse_port(&r[1..])?),
            _ => return Err(format!("unexpected {rest:?} after {host}")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err("an IPv6 host in brackets: ws://[::1]:8080/ws".to_owned());
            }
            Some((h, p)) => (h, parse_port(p)?),
            None => (authority, default_port),
        }
    };
    let valid = |b: u8| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b);
    if host.is_empty() || !host.bytes().all(valid) {
        return Err(format!("host {host:?}: a host name or an IP address"));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, target: &str) -> WsUrl {
        WsUrl {
            tls: false,
            host: host.to_owned(),
            port,
            target: target.to_owned(),
        }
    }

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(
            WsUrl::parse("ws://127.0.0.1:8080/ws").unwrap(),
            url("127.0.0.1", 8080, "/ws")
        );
        assert_eq!(WsUrl::parse("ws://localhost").unwrap(), url("localhost", 80, "/"));
        assert_eq!(WsUrl::parse("WS://example.com/").unwrap(), url("example.com", 80, "/"));
        assert_eq!(
            WsUrl::parse("ws://h:1/a/b?token=x&y=1").unwrap(),
            url("h", 1, "/a/b?token=x&y=1")
        );
        assert_eq!(WsUrl::parse("ws://h:9?q").unwrap(), url("h", 9, "/?q"));
        assert_eq!(WsUrl::parse("ws://[::1]:8080/ws").unwrap(), url("[::1]", 8080, "/ws"));
        assert_eq!(WsUrl::parse("ws://[::1]").unwrap(), url("[::1]", 80, "/"));
    }

    #[test]
    fn refuses_what_it_cannot_serve_with_a_reason() {
        for (bad, says) in [
            ("127.0.0.1:8080/ws", "ws://"),
            ("http://h/ws", "scheme"),
            ("ws://h:0/ws", "port"),
            ("ws://h:65536/ws", "port"),
            ("ws://h:x/ws", "port"),
            ("ws:///ws", "host"),
            ("ws://u:p@h/ws", "user@"),
            ("ws://h/ws#frag", "fragment"),
            ("ws://h/a b", "printable"),
            ("ws://::1/ws", "brackets"),
            ("ws://[::1/ws", "brackets"),
            ("ws://[nope]/ws", "IPv6"),
            ("ws://[::1]x/ws", "unexpected"),
        ] {
            let err = WsUrl::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(WsUrl::parse(&format!("ws://h/{}", "a".repeat(MAX_URL_BYTES))).is_err());
    }

    #[test]
    fn url_lists_parse_one_scheme_for_all() {
        let one = WsUrls::parse("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(one, WsUrls::one(url("127.0.0.1", 8080, "/ws")));
        assert_eq!(one.to_string(), "ws://127.0.0.1:8080/ws");
        let two = WsUrls::parse("ws://127.0.0.1:1/ws, ws://[::1]:2/x?q").unwrap();
        assert_eq!(two.list(), &[url("127.0.0.1", 1, "/ws"), url("[::1]", 2, "/x?q")][..]);
        assert_eq!(two.to_string(), "ws://127.0.0.1:1/ws,ws://[::1]:2/x?q");
        assert!(!two.tls());
        assert!(WsUrls::parse("wss://a/ws,wss://b/ws").unwrap().tls());
        for (bad, says) in [
            ("ws://a/ws,wss://b/ws", "same scheme"),
            ("ws://a/ws,", "empty"),
            (",ws://a/ws", "empty"),
            ("ws://a/ws,,ws://b/ws", "URL 2"),
            ("ws://a/ws,http://b/ws", "URL 2: scheme"),
            ("", "ws://"),
        ] {
            let err = WsUrls::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let many = vec!["ws://a/ws"; MAX_URLS + 1].join(",");
        assert!(WsUrls::parse(&many).unwrap_err().contains("at most"));
        assert_eq!(WsUrls::parse(&many[..many.len() - 10]).unwrap().list().len(), MAX_URLS);
    }

    #[test]
    fn connections_spread_over_the_urls() {
        let spread = |assign: Assign, n: usize, ids: u64| (0..ids).map(|id| assign.target(id, n)).collect::<Vec<_>>();
        // One URL: everything goes to it, whatever the mode.
        for assign in [
            Assign::RoundRobin,
            Assign::Fanout { publishers: 3 },
            Assign::DirectPairs,
        ] {
            assert!(spread(assign, 1, 50).iter().all(|&t| t == 0));
        }
        assert_eq!(spread(Assign::RoundRobin, 3, 7), [0, 1, 2, 0, 1, 2, 0]);
        // Fan-out: publishers 0..2 and subscribers 2.. each start at the first URL.
        assert_eq!(spread(Assign::Fanout { publishers: 2 }, 3, 7), [0, 1, 0, 1, 2, 0, 1]);
        assert_eq!(spread(Assign::Fanout { publishers: 0 }, 2, 4), [0, 1, 0, 1]);
        // Direct: pair i on URLs i % n and (i + 1) % n.
        assert_eq!(spread(Assign::DirectPairs, 2, 8), [0, 1, 1, 0, 0, 1, 1, 0]);
        assert_eq!(spread(Assign::DirectPairs, 3, 6), [0, 1, 1, 2, 2, 0]);
        for n in 2..8 {
            for pair in 0..100u64 {
                let (a, b) = (
                    Assign::DirectPairs.target(2 * pair, n),
                    Assign::DirectPairs.target(2 * pair + 1, n),
                );
                assert_ne!(a, b, "pair {pair} of {n} URLs stays on one gateway");
                assert!(a < n && b < n);
            }
        }
        // Every URL gets its share.
        let mut counts = [0u32; 4];
        for t in spread(Assign::DirectPairs, 4, 400) {
            counts[t] += 1;
        }
        assert_eq!(counts, [100; 4]);
    }

    #[test]
    fn host_header_and_resolution() {
        let u = WsUrl::parse("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(u.host_header(), "127.0.0.1:8080");
        assert_eq!(u.resolve().unwrap(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(u.to_string(), "ws://127.0.0.1:8080/ws");
        let u = WsUrl::parse("ws://[::1]/x").unwrap();
        assert_eq!(u.host_header(), "[::1]");
        assert_eq!(u.resolve().unwrap(), "[::1]:80".parse().unwrap());
        let u = WsUrl::parse("ws://localhost:9/").unwrap();
        assert!(u.resolve().unwrap().ip().is_loopback());
        let u = WsUrl::parse("wss://localhost/ws").unwrap();
        assert!(u.tls);
        assert_eq!(
            (u.port, u.host_header(), u.to_string()),
            (443, "localhost".to_owned(), "wss://localhost/ws".to_owned())
        );
        let u = WsUrl::parse("wss://[::1]:8443/ws").unwrap();
        assert_eq!((u.bare_host(), u.host_header()), ("::1", "[::1]:8443".to_owned()));
    }
}
