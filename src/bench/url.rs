//! The `--url` of the server under test: `ws://` or `wss://host[:port][/path][?query]`.
//!
//! Parsed once at start-up into what the workers need: the socket address to connect
//! to (the host is resolved once, here, so no worker ever waits on DNS), the `Host`
//! header and the request target (path and query) of the upgrade request, and whether
//! the connection is TLS (`wss://`, measured against the gateway's own TLS listener).
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Longest URL accepted: the request target must fit the server's request line limit
/// (4 KiB by default) anyway.
pub const MAX_URL_BYTES: usize = 4096;

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
