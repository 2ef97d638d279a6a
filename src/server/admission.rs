//! Admission of an upgrade request: one sans-IO step from a parsed request to a flat
//! verdict.
//!
//! In: a complete, valid upgrade request (`proto::handshake::Request`), what the shard
//! knows (draining, at its connection cap), the client's socket address (looked up only
//! when a per-address limit needs it), the shared edge limits and authenticator, and the
//! two clocks (`now` for the limiters, `wall` for token expiry). Out: [`Verdict`]: either
//! [`Admitted`] (the edge ticket to keep on the slot, the identity, counters to bump)
//! or [`Refused`] (which names its HTTP
//! response and its metric label). Nothing here touches a socket, a clock or a metric:
//! the shard's `upgrade` job acts on the verdict, and the tests below drive it with a
//! fake clock.
//!
//! The order of the checks is the gateway's contract (README, "Behaviour a client
//! sees"): draining → connection cap → upgrades per address → connections per address →
//! token. The address checks come before the token so that a flood from one address
//! cannot buy signature verifications; a refusal after a ticket was taken gives the
//! ticket back, so a refused upgrade holds nothing. Connections per user are the user's
//! owner's to count (`msg::owner::UserShards::add`), once it hears of the connection
//! right after the 101: it is the one place that sees them all.

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use crate::auth::{AuthError, Authenticator, Identity};
use crate::edge::{Edge, IpTicket, Refusal};
use crate::proto::handshake::{Request, Status, write_error_response};

/// What the shard knows about itself at this moment.
#[derive(Clone, Copy, Debug)]
pub struct ShardView {
    /// The shard is draining: no new connections.
    pub draining: bool,
    /// The shard holds its connection cap.
    pub at_capacity: bool,
}

/// The outcome of one admission.
#[derive(Debug)]
pub enum Verdict {
    /// Upgrade: send the 101 and keep the ticket on the slot.
    Admitted(Admitted),
    /// Refuse with the response [`Refused::write_response`] writes.
    Refused(Refused),
}

/// An admitted upgrade.
#[derive(Debug)]
pub struct Admitted {
    /// Who the connection is.
    pub identity: Identity,
    /// The address's share of the per-address limits, given back when it ends.
    pub ip: IpTicket,
    /// The address table was full: the address was let in uncounted
    /// (`limit_hits{limit="ip_table_full"}`).
    pub ip_untracked: bool,
}

/// Why an upgrade was refused; each maps to one response and one metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The shard is draining: 503 with `Retry-After: 1`.
    Draining,
    /// The shard holds its connection cap: 503 with `Retry-After: 1`.
    ConnectionLimit,
    /// An edge limit (per address): 429.
    Edge(Refusal),
    /// The token is missing or invalid: 401 with `WWW-Authenticate`.
    Unauthorized(AuthError),
}

impl Refused {
    /// The `handshake_failures{reason}` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Draining => "draining",
            Self::ConnectionLimit => "connection_limit",
            Self::Edge(refusal) => refusal.label(),
            Self::Unauthorized(_) => "unauthorized",
        }
    }

    /// Appends the HTTP response to `out`. The 401 names why in `WWW-Authenticate`
    /// (RFC 6750 section 3) and never echoes the token.
    pub fn write_response(self, out: &mut Vec<u8>) {
        match self {
            Self::Draining => {
                write_error_response(
                    out,
                    Status::ServiceUnavailable,
                    "server draining",
                    &[("Retry-After", "1")],
                );
            }
            Self::ConnectionLimit => {
                write_error_response(
                    out,
                    Status::ServiceUnavailable,
                    "connection limit",
                    &[("Retry-After", "1")],
                );
            }
            Self::Edge(refusal @ Refusal::UpgradeRate { retry_after_secs }) => {
                let secs = retry_after_secs.to_string();
                write_error_response(
                    out,
                    Status::TooManyRequests,
                    refusal.reason(),
                    &[("Retry-After", &secs)],
                );
            }
            Self::Edge(refusal @ Refusal::ConnectionsPerIp) => {
                write_error_response(out, Status::TooManyRequests, refusal.reason(), &[]);
            }
            Self::Unauthorized(error) => write_error_response(
                out,
                Status::Unauthorized,
                error.reason(),
                &[("WWW-Authenticate", error.www_authenticate())],
            ),
        }
    }
}

/// Everything admission reads besides the request: shared, read-mostly state.
#[derive(Clone, Copy, Debug)]
pub struct Gate<'a> {
    /// Per-address limits (shared by every shard).
    pub edge: &'a Edge,
    /// Token verification.
    pub auth: &'a Authenticator,
}

impl Gate<'_> {
    /// Admits or refuses `request`. `peer` gives the
    /// socket's remote address; it is called only when a per-address limit is on (a
    /// `getpeername` the common case can skip). On refusal every ticket taken is given
    /// back.
    pub fn admit(
        self,
        request: &Request<'_>,
        shard: ShardView,
        peer: impl FnOnce() -> Option<IpAddr>,
        now: Instant,
        wall: SystemTime,
    ) -> Verdict {
        if shard.draining {
            return Verdict::Refused(Refused::Draining);
        }
        if shard.at_capacity {
            return Verdict::Refused(Refused::ConnectionLimit);
        }
        let (ip, ip_untracked) = match self.admit_address(request, peer, now) {
            Ok(admission) => admission,
            Err(refusal) => return Verdict::Refused(Refused::Edge(refusal)),
        };
        match self.auth.authenticate(request, wall) {
            Ok(identity) => Verdict::Admitted(Admitted {
                identity,
                ip,
                ip_untracked,
            }),
            Err(error) => {
                self.edge.release_ip(ip);
                Verdict::Refused(Refused::Unauthorized(error))
            }
        }
    }

    /// The per-address checks: the client's address (the peer, or the right-most
    /// untrusted `X-Forwarded-For` entry behind a trusted proxy), then its bucket and
    /// its connection count.
    fn admit_address(
        self,
        request: &Request<'_>,
        peer: impl FnOnce() -> Option<IpAddr>,
        now: Instant,
    ) -> Result<(IpTicket, bool), Refusal> {
        if !self.edge.config().tracks_ips() {
            return Ok((IpTicket::NONE, false));
        }
        let Some(peer) = peer() else {
            // The socket is already gone: nothing to count it against; it fails later.
            return Ok((IpTicket::NONE, false));
        };
        let client = self.edge.client_ip(peer, request.forwarded_for());
        self.edge
            .admit_ip(client, now)
            .map(|admission| (admission.ticket, admission.untracked))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;
    use crate::auth::{AuthConfig, AuthMode};
    use crate::edge::EdgeConfig;
    use crate::limits::Limits;
    use crate::proto::handshake::{HandshakeConfig, parse_request};

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

    fn request_bytes(user: Option<&str>) -> Vec<u8> {
        let target = user.map_or_else(|| "/ws".to_owned(), |user| format!("/ws?user={user}"));
        format!(
            "GET {target} HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes()
    }

    /// An anonymous-mode authenticator: `?user=` names the user, nothing is verified,
    /// so the tests exercise the order and the tickets, not the token code (tested in
    /// `auth`).
    fn open_auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            mode: AuthMode::None,
            ..AuthConfig::default()
        })
        .unwrap()
    }

    /// An authenticator that refuses every request here (none carries a token).
    fn strict_auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            hmac_secret: Some("admission-test-secret-0123456789abcdef".into()),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn edge(cfg: EdgeConfig) -> Edge {
        Edge::new(cfg)
    }

    fn open_shard() -> ShardView {
        ShardView {
            draining: false,
            at_capacity: false,
        }
    }

    /// Runs one admission of `bytes` at `now`.
    fn admit(gate: Gate<'_>, bytes: &[u8], shard: ShardView, now: Instant) -> Verdict {
        let request = parse_request(bytes, &Limits::default(), &HandshakeConfig::default())
            .expect("valid request")
            .expect("complete request");
        gate.admit(&request, shard, || Some(PEER), now, SystemTime::now())
    }

    fn refused(verdict: Verdict) -> Refused {
        match verdict {
            Verdict::Refused(refused) => refused,
            Verdict::Admitted(admitted) => panic!("admitted {}", admitted.identity.user_id),
        }
    }

    fn admitted(verdict: Verdict) -> Admitted {
        match verdict {
            Verdict::Admitted(admitted) => admitted,
            Verdict::Refused(refused) => panic!("refused: {refused:?}"),
        }
    }

    #[test]
    fn the_checks_run_in_the_documented_order() {
        let edge = edge(EdgeConfig {
            upgrade_rate_per_ip: 1,
            upgrade_burst_per_ip: 1,
            ..EdgeConfig::default()
        });
        let auth = strict_auth();
        let gate = Gate {
            edge: &edge,
            auth: &auth,
        };
        let bytes = request_bytes(None);
        let now = Instant::now();
        // Draining wins over everything, then the cap; neither takes an address token.
        let both = ShardView {
            draining: true,
            at_capacity: true,
        };
        assert_eq!(refused(admit(gate, &bytes, both, now)), Refused::Draining);
        let full = ShardView {
            draining: false,
            at_capacity: true,
        };
        assert_eq!(refused(admit(gate, &bytes, full, now)), Refused::ConnectionLimit);
        // The address's one token is still there: the token check is reached (and fails).
        assert!(matches!(
            refused(admit(gate, &bytes, open_shard(), now)),
            Refused::Unauthorized(AuthError::Missing)
        ));
        // The bucket is empty now: the address is refused before the token is looked at.
        assert_eq!(
            refused(admit(gate, &bytes, open_shard(), now)),
            Refused::Edge(Refusal::UpgradeRate { retry_after_secs: 1 })
        );
    }

    #[test]
    fn the_upgrade_bucket_refills_on_the_clock_it_is_given() {
        let edge = edge(EdgeConfig {
            upgrade_rate_per_ip: 2,
            upgrade_burst_per_ip: 2,
            ..EdgeConfig::default()
        });
        let auth = open_auth();
        let gate = Gate {
            edge: &edge,
            auth: &auth,
        };
        let t0 = Instant::now();
        for slot in 0..2 {
            let bytes = request_bytes(Some(&format!("u{slot}")));
            admitted(admit(gate, &bytes, open_shard(), t0));
        }
        let bytes = request_bytes(Some("u9"));
        let refusal = refused(admit(gate, &bytes, open_shard(), t0));
        assert_eq!(refusal, Refused::Edge(Refusal::UpgradeRate { retry_after_secs: 1 }));
        // 2/s: one token is back after half a second, not before.
        let early = t0 + Duration::from_millis(400);
        assert!(matches!(
            refused(admit(gate, &bytes, open_shard(), early)),
            Refused::Edge(Refusal::UpgradeRate { .. })
        ));
        admitted(admit(gate, &bytes, open_shard(), t0 + Duration::from_millis(500)));
        assert!(matches!(
            refused(admit(gate, &bytes, open_shard(), t0 + Duration::from_millis(500))),
            Refused::Edge(Refusal::UpgradeRate { .. })
        ));
    }

    #[test]
    fn a_refused_token_gives_its_address_ticket_back() {
        let edge = edge(EdgeConfig {
            max_connections_per_ip: 1,
            ..EdgeConfig::default()
        });
        let auth = strict_auth();
        let gate = Gate {
            edge: &edge,
            auth: &auth,
        };
        let now = Instant::now();
        for _ in 0..5 {
            assert!(matches!(
                refused(admit(gate, &request_bytes(None), open_shard(), now)),
                Refused::Unauthorized(_)
            ));
        }
        // Had a ticket leaked, the one allowed connection would be taken.
        let auth = open_auth();
        let gate = Gate {
            edge: &edge,
            auth: &auth,
        };
        let first = admitted(admit(gate, &request_bytes(Some("a")), open_shard(), now));
        assert_eq!(
            refused(admit(gate, &request_bytes(Some("b")), open_shard(), now)),
            Refused::Edge(Refusal::ConnectionsPerIp)
        );
        edge.release_ip(first.ip);
        admitted(admit(gate, &request_bytes(Some("b")), open_shard(), now));
    }

    #[test]
    fn anonymous_ids_need_no_peer_lookup_without_address_limits() {
        let edge = edge(EdgeConfig {
            upgrade_rate_per_ip: 0,
            max_connections_per_ip: 0,
            ..EdgeConfig::default()
        });
        let auth = open_auth();
        let gate = Gate {
            edge: &edge,
            auth: &auth,
        };
        let bytes = request_bytes(None);
        let request = parse_request(&bytes, &Limits::default(), &HandshakeConfig::default())
            .unwrap()
            .unwrap();
        for _ in 0..3 {
            let verdict = gate.admit(
                &request,
                open_shard(),
                || panic!("the peer is looked up only for per-address limits"),
                Instant::now(),
                SystemTime::now(),
            );
            let admitted = admitted(verdict);
            assert!(admitted.identity.generated);
            assert_eq!(admitted.ip, IpTicket::NONE);
        }
    }

    #[test]
    fn each_refusal_writes_its_status_and_never_the_token() {
        let cases = [
            (Refused::Draining, "HTTP/1.1 503 ", Some("Retry-After: 1\r\n")),
            (Refused::ConnectionLimit, "HTTP/1.1 503 ", Some("Retry-After: 1\r\n")),
            (
                Refused::Edge(Refusal::UpgradeRate { retry_after_secs: 3 }),
                "HTTP/1.1 429 ",
                Some("Retry-After: 3\r\n"),
            ),
            (Refused::Edge(Refusal::ConnectionsPerIp), "HTTP/1.1 429 ", None),
        ];
        for (refused, status, header) in cases {
            let mut out = Vec::new();
            refused.write_response(&mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with(status), "{refused:?}: {text}");
            assert!(text.contains("Connection: close\r\n"), "{text}");
            if let Some(header) = header {
                assert!(text.contains(header), "{refused:?}: {text}");
            }
        }
    }

    #[test]
    fn unauthorized_response_bytes() {
        let mut out = Vec::new();
        Refused::Unauthorized(AuthError::Expired).write_response(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 401 Unauthorized\r\n\
             Connection: close\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 18\r\n\
             WWW-Authenticate: Bearer realm=\"wsgate\", error=\"invalid_token\", error_description=\"token has expired\"\r\n\
             \r\n\
             token has expired\n"
        );
        let mut out = b"earlier".to_vec();
        Refused::Unauthorized(AuthError::Missing).write_response(&mut out);
        let response = String::from_utf8(out).unwrap();
        assert!(response.starts_with("earlierHTTP/1.1 401 Unauthorized\r\n"));
        assert!(
            response.contains("\r\nWWW-Authenticate: Bearer realm=\"wsgate\"\r\n\r\n"),
            "{response}"
        );
    }
}
