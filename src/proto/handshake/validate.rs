//! The RFC 6455 section 4.2.1 rules, on a request httparse found complete.
//!
//! - In: what httparse found (method, target, minor version, header slots) and the head
//!   bytes, from `request.rs`, and the listener's [`HandshakeConfig`].
//! - Out: the [`Request`] view, or the first failing check as a [`HandshakeError`],
//!   whose status is the HTTP answer. The checks run in the order of the table in the
//!   module docs of `proto::handshake`.
//!
//! One pass over the headers records what it saw (`Seen`, with names classified by
//! `Known::classify`); the checks run afterwards, so the order of the header lines never
//! decides which error wins.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::error::HandshakeError;
use super::lists::{ExtensionScan, ProtocolScan};
use super::request::Request;
use super::syntax::{is_valid_host, trim_ows};
use super::{HandshakeConfig, SUPPORTED_VERSION};

/// Length of a valid `Sec-WebSocket-Key`: base64 of a 16-byte nonce, with its `==`.
const KEY_LEN: usize = 24;
/// What the key must decode to (RFC 6455 section 4.1, client requirement 7).
const KEY_NONCE_LEN: usize = 16;

/// Steps 1 to 13 of the module docs, on a request httparse found complete.
pub(super) fn validate<'b>(
    method: &'b str,
    target: &'b str,
    minor_version: u8,
    headers: &[httparse::Header<'b>],
    head: &'b [u8],
    cfg: &HandshakeConfig,
) -> Result<Request<'b>, HandshakeError> {
    use HandshakeError as E;

    if method != "GET" {
        return Err(E::MethodNotGet);
    }
    // httparse parses HTTP/1.0 and HTTP/1.1 only; anything else was already a 400.
    if minor_version == 0 {
        return Err(E::Http10);
    }
    let target = Target::parse(target)?;

    let mut seen = Seen::default();
    for header in headers {
        seen.record(header, cfg);
    }

    let host_header = seen.host.required(E::MissingHost, E::DuplicateHost)?;
    let host_header = text(host_header)
        .filter(|host| is_valid_host(host))
        .ok_or(E::InvalidHost)?;
    let host = target.authority.unwrap_or(host_header);
    if seen.declares_body {
        return Err(E::UnexpectedBody);
    }
    if !cfg.paths.iter().any(|path| path == target.path) {
        return Err(E::PathNotFound);
    }
    if !seen.upgrade_present {
        return Err(E::MissingUpgrade);
    }
    if !seen.upgrade_websocket {
        return Err(E::NotWebSocketUpgrade);
    }
    if !seen.connection_upgrade {
        return Err(E::MissingConnectionUpgrade);
    }
    match seen.version {
        Single::Missing => return Err(E::MissingVersion),
        Single::Duplicate => return Err(E::DuplicateVersion),
        Single::One(version) if version != SUPPORTED_VERSION.as_bytes() => {
            return Err(E::UnsupportedVersion);
        }
        Single::One(_) => {}
    }
    let key = seen.key.required(E::MissingKey, E::DuplicateKey)?;
    if !is_valid_key(key) {
        return Err(E::InvalidKey);
    }
    if seen.protocols.is_malformed() {
        return Err(E::MalformedProtocols);
    }
    if seen.extensions.is_malformed() {
        return Err(E::MalformedExtensions);
    }
    let origin = optional_text(seen.origin.optional(E::DuplicateOrigin)?)?;
    let origin_allowed = cfg.allowed_origins.is_empty()
        || origin.is_none_or(|origin| {
            cfg.allowed_origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        });
    if !origin_allowed {
        return Err(E::OriginNotAllowed);
    }
    let authorization = optional_text(seen.authorization.optional(E::DuplicateAuthorization)?)?;
    let selected_protocol = match seen.protocols.best {
        // An ASCII token, so this cannot fail; refuse rather than unwrap all the same.
        Some((_, token)) => Some(text(token).ok_or(E::MalformedProtocols)?),
        None => None,
    };

    Ok(Request {
        head,
        path: target.path,
        query: target.query,
        host,
        key,
        selected_protocol,
        origin,
        authorization,
        user_agent: optional_text(seen.user_agent)?,
        forwarded_for: optional_text(seen.forwarded_for)?,
        x_real_ip: optional_text(seen.x_real_ip)?,
        forwarded: optional_text(seen.forwarded)?,
    })
}

/// The path of a complete request's target (without its query), as step 6 compared it
/// against [`HandshakeConfig::paths`]; `None` if the request line does not parse. For a
/// caller that answers a few plain `GET`s itself after [`HandshakeError::PathNotFound`]
/// (steps 1 to 5 passed, so the request line is well formed).
pub fn request_path(head: &[u8]) -> Option<&str> {
    let end = head.iter().position(|&b| b == b'\r' || b == b'\n')?;
    let line = std::str::from_utf8(&head[..end]).ok()?;
    let mut parts = line.split(' ');
    let (_method, target) = (parts.next()?, parts.next()?);
    Target::parse(target).ok().map(|target| target.path)
}

/// The request target, split.
struct Target<'b> {
    /// The authority of an absolute-form target.
    authority: Option<&'b str>,
    path: &'b str,
    query: Option<&'b str>,
}

impl<'b> Target<'b> {
    /// Origin-form (`/path?query`) or absolute-form (`http(s)://authority/path?query`,
    /// scheme case-insensitive); anything else is 400.
    fn parse(target: &'b str) -> Result<Self, HandshakeError> {
        if target.contains('#') {
            return Err(HandshakeError::InvalidTarget);
        }
        let (authority, path_and_query) = if target.starts_with('/') {
            (None, target)
        } else {
            let after_scheme = strip_prefix_ignore_ascii_case(target, "http://")
                .or_else(|| strip_prefix_ignore_ascii_case(target, "https://"))
                .ok_or(HandshakeError::InvalidTarget)?;
            let end = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
            let (authority, rest) = after_scheme.split_at(end);
            // Userinfo (`user@host`) is refused here too: `@` is not a host byte, and
            // RFC 9110 section 4.2.4 says to treat it as an error.
            if !is_valid_host(authority) {
                return Err(HandshakeError::InvalidTarget);
            }
            (Some(authority), rest)
        };
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        // RFC 9110 section 4.2.3: an empty path in an http(s) URI means "/".
        let path = if path.is_empty() { "/" } else { path };
        Ok(Target { authority, path, query })
    }
}

/// A header that must appear at most once.
#[derive(Clone, Copy, Debug, Default)]
enum Single<'b> {
    #[default]
    Missing,
    One(&'b [u8]),
    Duplicate,
}

impl<'b> Single<'b> {
    fn push(&mut self, value: &'b [u8]) {
        *self = match self {
            Single::Missing => Single::One(value),
            Single::One(_) | Single::Duplicate => Single::Duplicate,
        };
    }

    fn required(self, missing: HandshakeError, duplicate: HandshakeError) -> Result<&'b [u8], HandshakeError> {
        self.optional(duplicate)?.ok_or(missing)
    }

    fn optional(self, duplicate: HandshakeError) -> Result<Option<&'b [u8]>, HandshakeError> {
        match self {
            Single::Missing => Ok(None),
            Single::One(value) => Ok(Some(value)),
            Single::Duplicate => Err(duplicate),
        }
    }
}

/// What one pass over the headers found; judged afterwards in the documented order,
/// so the order of the header lines never decides which error wins.
#[derive(Default)]
struct Seen<'b> {
    host: Single<'b>,
    key: Single<'b>,
    version: Single<'b>,
    origin: Single<'b>,
    authorization: Single<'b>,
    upgrade_present: bool,
    upgrade_websocket: bool,
    connection_upgrade: bool,
    declares_body: bool,
    protocols: ProtocolScan<'b>,
    extensions: ExtensionScan,
    user_agent: Option<&'b [u8]>,
    forwarded_for: Option<&'b [u8]>,
    x_real_ip: Option<&'b [u8]>,
    forwarded: Option<&'b [u8]>,
}

impl<'b> Seen<'b> {
    fn record(&mut self, header: &httparse::Header<'b>, cfg: &HandshakeConfig) {
        let Some(known) = Known::classify(header.name) else {
            return;
        };
        let value = trim_ows(header.value);
        match known {
            Known::Host => self.host.push(value),
            Known::Upgrade => {
                self.upgrade_present = true;
                self.upgrade_websocket |= list_contains(value, b"websocket");
            }
            Known::Connection => self.connection_upgrade |= list_contains(value, b"upgrade"),
            Known::Key => self.key.push(value),
            Known::Version => self.version.push(value),
            Known::Protocol => self.protocols.scan(value, &cfg.subprotocols),
            Known::Extensions => self.extensions.scan(value),
            Known::Origin => self.origin.push(value),
            Known::Authorization => self.authorization.push(value),
            Known::UserAgent => self.user_agent = Some(value),
            Known::ForwardedFor => self.forwarded_for = Some(value),
            Known::RealIp => self.x_real_ip = Some(value),
            Known::Forwarded => self.forwarded = Some(value),
            Known::ContentLength => self.declares_body |= value != b"0",
            Known::TransferEncoding => self.declares_body = true,
        }
    }
}

/// The headers validation reads; all others are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    Host,
    Upgrade,
    Connection,
    Key,
    Version,
    Protocol,
    Extensions,
    Origin,
    Authorization,
    UserAgent,
    ForwardedFor,
    RealIp,
    Forwarded,
    ContentLength,
    TransferEncoding,
}

impl Known {
    /// Header names are case-insensitive (RFC 9110 section 5.1).
    fn classify(name: &str) -> Option<Known> {
        // Dispatch on the length first: most headers a browser sends have a length no
        // header we read has, and no length has more than two candidates.
        let candidates: &[(&str, Known)] = match name.len() {
            4 => &[("host", Known::Host)],
            6 => &[("origin", Known::Origin)],
            7 => &[("upgrade", Known::Upgrade)],
            9 => &[("x-real-ip", Known::RealIp), ("forwarded", Known::Forwarded)],
            10 => &[("connection", Known::Connection), ("user-agent", Known::UserAgent)],
            13 => &[("authorization", Known::Authorization)],
            14 => &[("content-length", Known::ContentLength)],
            15 => &[("x-forwarded-for", Known::ForwardedFor)],
            17 => &[
                ("sec-websocket-key", Known::Key),
                ("transfer-encoding", Known::TransferEncoding),
            ],
            21 => &[("sec-websocket-version", Known::Version)],
            22 => &[("sec-websocket-protocol", Known::Protocol)],
            24 => &[("sec-websocket-extensions", Known::Extensions)],
            _ => return None,
        };
        candidates
            .iter()
            .find(|(lower, _)| eq_lowercase(name.as_bytes(), lower.as_bytes()))
            .map(|&(_, known)| known)
    }
}

/// A 16-byte nonce in canonical base64 (standard alphabet, `==`, zero pad bits).
fn is_valid_key(key: &[u8]) -> bool {
    // The length check first, so the decoder never sees more than 24 bytes and its
    // output fits the buffer (24 base64 bytes decode to at most 18).
    if key.len() != KEY_LEN {
        return false;
    }
    let mut nonce = [0u8; 18];
    matches!(BASE64.decode_slice(key, &mut nonce), Ok(KEY_NONCE_LEN))
}

/// Whether a comma-separated header lists `token` (ASCII case-insensitive).
/// `token` must be lowercase.
fn list_contains(value: &[u8], token: &[u8]) -> bool {
    // Browsers send the bare token; check that before splitting.
    eq_lowercase(value, token)
        || value
            .split(|&b| b == b',')
            .any(|element| eq_lowercase(trim_ows(element), token))
}

/// ASCII case-insensitive equality against `lower`, a lowercase name or token made of
/// `a-z`, `0-9` and `-` only. Setting bit 0x20 lowercases letters and leaves digits and
/// `-` alone; for those targets `b | 0x20 == l | 0x20` also matches only control bytes
/// besides `l` and its uppercase form, and httparse lets no control byte but HTAB
/// (which matches nothing here) into a name or value. Eight bytes at a time: this runs
/// for every header of every handshake, and header names are 4 to 24 bytes long.
fn eq_lowercase(bytes: &[u8], lower: &[u8]) -> bool {
    debug_assert!(
        lower
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    );
    const FOLD: u64 = u64::from_ne_bytes([0x20; 8]);
    fn word(chunk: &[u8]) -> u64 {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        u64::from_ne_bytes(word)
    }
    if bytes.len() != lower.len() {
        return false;
    }
    let words = bytes.chunks_exact(8);
    let lower_words = lower.chunks_exact(8);
    let tail_equal = words
        .remainder()
        .iter()
        .zip(lower_words.remainder())
        .all(|(&b, &l)| b | 0x20 == l | 0x20);
    tail_equal && words.zip(lower_words).all(|(b, l)| word(b) | FOLD == word(l) | FOLD)
}

fn text(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(value).ok()
}

fn optional_text(value: Option<&[u8]>) -> Result<Option<&str>, HandshakeError> {
    value
        .map(|value| text(value).ok_or(HandshakeError::NonUtf8Header))
        .transpose()
}

fn strip_prefix_ignore_ascii_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::handshake::testutil::*;
    use proptest::prelude::*;

    // ---- RFC 6455 section 4.2.1 item 1: GET, HTTP/1.1, request target ----

    #[test]
    fn accepts_minimal_rfc_request() {
        let buf = minimal();
        let request = accepted(&buf);
        assert_eq!(request.header_len(), buf.len());
        assert_eq!(request.path(), "/ws");
        assert_eq!(request.query(), None);
        assert_eq!(request.host(), "server.example.com");
        assert_eq!(request.origin(), None);
        assert_eq!(request.selected_protocol(), None);
        assert_eq!(request.offered_protocols().count(), 0);
        assert_eq!(request.extensions().count(), 0);
    }

    #[test]
    fn accepts_chrome_request() {
        let request = accepted(CHROME);
        assert_eq!(request.header_len(), CHROME.len());
        assert_eq!(request.path(), "/ws");
        assert_eq!(request.query(), Some("token=abc%20def&room=lobby"));
        assert_eq!(request.host(), "chat.example.com");
        assert_eq!(request.origin(), Some("https://chat.example.com"));
        assert!(request.user_agent().unwrap().starts_with("Mozilla/5.0"));
        assert_eq!(request.headers().count(), 13);
    }

    #[test]
    fn rejects_post_with_405() {
        let error = rejected(&with_line("POST /ws HTTP/1.1"));
        assert_eq!(error, HandshakeError::MethodNotGet);
        assert_eq!(error.status(), Status::MethodNotAllowed);
        assert_eq!(
            response_of(error),
            "HTTP/1.1 405 Method Not Allowed\r\n\
             Connection: close\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 33\r\n\
             Allow: GET\r\n\
             \r\n\
             a WebSocket upgrade must use GET\n"
        );
    }

    #[test]
    fn rejects_head_and_connect_with_405() {
        assert_eq!(rejected(&with_line("HEAD /ws HTTP/1.1")), HandshakeError::MethodNotGet);
        assert_eq!(
            rejected(&with_line("OPTIONS /ws HTTP/1.1")),
            HandshakeError::MethodNotGet
        );
    }

    #[test]
    fn method_is_case_sensitive() {
        assert_eq!(rejected(&with_line("get /ws HTTP/1.1")), HandshakeError::MethodNotGet);
    }

    #[test]
    fn method_is_checked_before_http_version() {
        assert_eq!(rejected(&with_line("POST /ws HTTP/1.0")), HandshakeError::MethodNotGet);
    }

    #[test]
    fn rejects_http_1_0() {
        let error = rejected(&with_line("GET /ws HTTP/1.0"));
        assert_eq!(error, HandshakeError::Http10);
        assert_eq!(error.status(), Status::BadRequest);
    }

    #[test]
    fn rejects_unknown_http_version_as_malformed() {
        assert_eq!(
            rejected(&with_line("GET /ws HTTP/2.0")),
            HandshakeError::MalformedRequest
        );
        assert_eq!(
            rejected(&with_line("GET /ws HTTP/1.1 extra")),
            HandshakeError::MalformedRequest
        );
    }

    #[test]
    fn accepts_absolute_form_target_and_takes_its_path() {
        let buf = with_line("GET http://chat.example.com:8080/ws?x=1 HTTP/1.1");
        let request = accepted(&buf);
        assert_eq!(request.path(), "/ws");
        assert_eq!(request.query(), Some("x=1"));
        // RFC 9112 section 3.2.2: the authority of the target wins over Host.
        assert_eq!(request.host(), "chat.example.com:8080");
    }

    #[test]
    fn absolute_form_scheme_is_case_insensitive_and_https_allowed() {
        assert_eq!(accepted(&with_line("GET HTTPS://h/ws HTTP/1.1")).path(), "/ws");
    }

    #[test]
    fn absolute_form_without_path_means_root() {
        let cfg = HandshakeConfig {
            paths: vec!["/".into()],
            ..HandshakeConfig::default()
        };
        let buf = with_line("GET http://h?q=1 HTTP/1.1");
        let request = parse_with(&buf, &cfg).unwrap().unwrap();
        assert_eq!(request.path(), "/");
        assert_eq!(request.query(), Some("q=1"));
    }

    #[test]
    fn rejects_targets_that_are_not_origin_or_http_absolute_form() {
        for line in [
            "GET * HTTP/1.1",
            "GET chat.example.com:443 HTTP/1.1",
            "GET ws://h/ws HTTP/1.1",
            "GET ftp://h/ws HTTP/1.1",
            "GET http:///ws HTTP/1.1",
            "GET http://user@h/ws HTTP/1.1",
            "GET /ws#fragment HTTP/1.1",
        ] {
            assert_eq!(rejected(&with_line(line)), HandshakeError::InvalidTarget, "{line}");
        }
    }

    // ---- item 2: Host ----

    #[test]
    fn requires_host() {
        assert_eq!(rejected(&without("Host")), HandshakeError::MissingHost);
    }

    #[test]
    fn rejects_duplicate_host() {
        assert_eq!(
            rejected(&with(&[("Host", "other.example.com")])),
            HandshakeError::DuplicateHost
        );
    }

    #[test]
    fn rejects_empty_or_invalid_host() {
        assert_eq!(rejected(&replacing("Host", "")), HandshakeError::InvalidHost);
        assert_eq!(rejected(&replacing("Host", "a b")), HandshakeError::InvalidHost);
        assert_eq!(rejected(&replacing("Host", "evil.com/x")), HandshakeError::InvalidHost);
        assert_eq!(rejected(&replacing("Host", "user@h")), HandshakeError::InvalidHost);
    }

    #[test]
    fn host_may_carry_port_and_ip_literal() {
        assert_eq!(accepted(&replacing("Host", "[::1]:8080")).host(), "[::1]:8080");
        assert_eq!(accepted(&replacing("Host", "10.0.0.1:80")).host(), "10.0.0.1:80");
    }

    #[test]
    fn host_is_checked_before_path() {
        let buf = build("GET /nowhere HTTP/1.1", &[("Upgrade", "websocket")]);
        assert_eq!(rejected(&buf), HandshakeError::MissingHost);
    }

    // ---- item 3: Upgrade ----

    #[test]
    fn requires_upgrade_header() {
        assert_eq!(rejected(&without("Upgrade")), HandshakeError::MissingUpgrade);
        assert_eq!(HandshakeError::MissingUpgrade.status(), Status::BadRequest);
    }

    #[test]
    fn upgrade_token_list_is_case_insensitive() {
        for value in ["WebSocket", "WEBSOCKET", "websocket"] {
            accepted(&replacing("Upgrade", value));
        }
    }

    #[test]
    fn upgrade_may_list_other_protocols() {
        accepted(&replacing("Upgrade", "h2c, websocket"));
        accepted(&replacing("Upgrade", "websocket ,\tfoo/2"));
    }

    #[test]
    fn upgrade_may_be_split_across_headers() {
        let mut headers = minimal_headers();
        headers.retain(|(n, _)| *n != "Upgrade");
        headers.push(("Upgrade", "h2c"));
        headers.push(("upgrade", "websocket"));
        accepted(&build("GET /ws HTTP/1.1", &headers));
    }

    #[test]
    fn rejects_upgrade_without_websocket_token() {
        for value in ["h2c", "", "websockets", "web socket", "websocket/13"] {
            assert_eq!(
                rejected(&replacing("Upgrade", value)),
                HandshakeError::NotWebSocketUpgrade,
                "{value}"
            );
        }
    }

    // ---- item 4: Connection ----

    #[test]
    fn requires_connection_upgrade() {
        assert_eq!(
            rejected(&without("Connection")),
            HandshakeError::MissingConnectionUpgrade
        );
        assert_eq!(
            rejected(&replacing("Connection", "keep-alive")),
            HandshakeError::MissingConnectionUpgrade
        );
    }

    #[test]
    fn connection_header_may_list_other_tokens() {
        accepted(&replacing("Connection", "keep-alive, Upgrade"));
        accepted(&replacing("Connection", "Upgrade,keep-alive"));
        accepted(&replacing("Connection", ", , upgrade ,"));
    }

    #[test]
    fn connection_token_is_case_insensitive() {
        accepted(&replacing("Connection", "UPGRADE"));
        accepted(&replacing("Connection", "upgrade"));
    }

    #[test]
    fn connection_may_be_split_across_headers() {
        let mut headers = minimal_headers();
        headers.retain(|(n, _)| *n != "Connection");
        headers.push(("Connection", "keep-alive"));
        headers.push(("CONNECTION", "Upgrade"));
        accepted(&build("GET /ws HTTP/1.1", &headers));
    }

    #[test]
    fn connection_upgrade_must_be_a_whole_token() {
        assert_eq!(
            rejected(&replacing("Connection", "upgraded")),
            HandshakeError::MissingConnectionUpgrade
        );
        assert_eq!(
            rejected(&replacing("Connection", "keep-alive upgrade")),
            HandshakeError::MissingConnectionUpgrade
        );
    }

    // ---- item 5: Sec-WebSocket-Key ----

    #[test]
    fn requires_key() {
        assert_eq!(rejected(&without("Sec-WebSocket-Key")), HandshakeError::MissingKey);
    }

    #[test]
    fn rejects_duplicate_key() {
        assert_eq!(
            rejected(&with(&[("Sec-WebSocket-Key", KEY)])),
            HandshakeError::DuplicateKey
        );
    }

    #[test]
    fn key_must_decode_to_16_bytes() {
        use base64::Engine as _;
        for len in [0, 1, 15, 17, 20, 32] {
            let key = BASE64.encode(vec![7u8; len]);
            assert_eq!(
                rejected(&replacing("Sec-WebSocket-Key", &key)),
                HandshakeError::InvalidKey,
                "{len} bytes"
            );
        }
        let key = BASE64.encode([0xA5u8; 16]);
        accepted(&replacing("Sec-WebSocket-Key", &key));
    }

    #[test]
    fn key_must_be_standard_padded_base64() {
        for key in [
            "dGhlIHNhbXBsZSBub25jZQ",    // no padding
            "dGhlIHNhbXBsZSBub25jZQ=",   // short padding
            "dGhlIHNhbXBsZSBub25jZQ===", // extra padding
            "dGhlIHNhbXBsZSBub25j-Q==",  // URL-safe alphabet
            "dGhlIHNhbXBsZSBub25j ZQ==", // inner space
            "dGhlIHNhbXBsZSBub25jZ?==",  // not base64
            "dGhlIHNhbXBsZSBub25jZR==",  // non-zero pad bits: not what 16 bytes encode to
        ] {
            assert_eq!(
                rejected(&replacing("Sec-WebSocket-Key", key)),
                HandshakeError::InvalidKey,
                "{key}"
            );
        }
    }

    #[test]
    fn key_surrounding_whitespace_is_trimmed() {
        let buf = replacing("Sec-WebSocket-Key", &format!(" \t{KEY} \t"));
        assert_eq!(&accepted(&buf).accept_key(), ACCEPT.as_bytes());
    }

    #[test]
    fn key_error_is_400() {
        assert_eq!(HandshakeError::InvalidKey.status(), Status::BadRequest);
        assert_eq!(HandshakeError::MissingKey.status(), Status::BadRequest);
        assert_eq!(HandshakeError::DuplicateKey.status(), Status::BadRequest);
    }

    // ---- item 6: Sec-WebSocket-Version ----

    #[test]
    fn version_other_than_13_gets_426_with_supported_version() {
        for version in ["8", "12", "14", "13, 8", "013", "thirteen"] {
            let error = rejected(&replacing("Sec-WebSocket-Version", version));
            assert_eq!(error, HandshakeError::UnsupportedVersion, "{version}");
        }
        assert_eq!(
            response_of(HandshakeError::UnsupportedVersion),
            "HTTP/1.1 426 Upgrade Required\r\n\
             Connection: Upgrade, close\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 30\r\n\
             Upgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\n\
             \r\n\
             unsupported WebSocket version\n"
        );
    }

    #[test]
    fn missing_version_gets_426() {
        let error = rejected(&without("Sec-WebSocket-Version"));
        assert_eq!(error, HandshakeError::MissingVersion);
        assert_eq!(error.status(), Status::UpgradeRequired);
        assert!(response_of(error).contains("\r\nSec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn duplicate_version_is_400_naming_the_supported_version() {
        let error = rejected(&with(&[("Sec-WebSocket-Version", "13")]));
        assert_eq!(error, HandshakeError::DuplicateVersion);
        let response = response_of(error);
        assert!(response.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(response.contains("\r\nSec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn version_is_checked_before_key() {
        let buf = replacing("Sec-WebSocket-Key", "short");
        let buf = String::from_utf8(buf).unwrap().replace("Version: 13", "Version: 8");
        assert_eq!(rejected(buf.as_bytes()), HandshakeError::UnsupportedVersion);
    }

    // ---- Path (section 4.2.2: 404 when the resource is unavailable) ----

    #[test]
    fn unknown_path_gets_404() {
        let error = rejected(&with_line("GET /other HTTP/1.1"));
        assert_eq!(error, HandshakeError::PathNotFound);
        assert!(response_of(error).starts_with("HTTP/1.1 404 Not Found\r\n"));
    }

    #[test]
    fn path_match_is_exact() {
        for line in [
            "GET /ws/ HTTP/1.1",
            "GET /WS HTTP/1.1",
            "GET /ws/x HTTP/1.1",
            "GET /w%73 HTTP/1.1",
            "GET / HTTP/1.1",
        ] {
            assert_eq!(rejected(&with_line(line)), HandshakeError::PathNotFound, "{line}");
        }
    }

    #[test]
    fn request_path_is_the_path_step_6_compared() {
        for (line, path) in [
            ("GET /demo HTTP/1.1", Some("/demo")),
            ("GET /client/wsgate.js?v=2 HTTP/1.1", Some("/client/wsgate.js")),
            ("GET http://server.example.com/demo?x HTTP/1.1", Some("/demo")),
            ("GET https://server.example.com HTTP/1.1", Some("/")),
            ("GET /w%73 HTTP/1.1", Some("/w%73")),
            ("GET *", None),
            ("GET", None),
        ] {
            let buf = with_line(line);
            assert_eq!(request_path(&buf), path, "{line}");
            if let Some(path) = path {
                // Exactly what validation refused: a path it does not serve.
                assert_eq!(rejected(&buf), HandshakeError::PathNotFound, "{line}");
                assert_ne!(path, "/ws");
            }
        }
        assert_eq!(request_path(&minimal()), Some("/ws"));
        assert_eq!(request_path(b""), None);
        assert_eq!(
            request_path(b"GET /demo HTTP/1.1"),
            None,
            "no line end: not a complete request"
        );
    }

    #[test]
    fn query_is_not_part_of_the_path() {
        let buf = with_line("GET /chat?room=1 HTTP/1.1");
        assert_eq!(accepted(&buf).path(), "/chat");
        assert_eq!(accepted(&with_line("GET /ws? HTTP/1.1")).query(), Some(""));
    }

    #[test]
    fn default_config_serves_ws_only() {
        let cfg = HandshakeConfig::default();
        assert_eq!(cfg.paths, vec!["/ws".to_owned()]);
        assert!(parse_with(&minimal(), &cfg).unwrap().is_some());
        assert_eq!(
            parse_with(&with_line("GET / HTTP/1.1"), &cfg),
            Err(HandshakeError::PathNotFound)
        );
    }

    #[test]
    fn path_is_checked_before_websocket_headers() {
        // A plain browser visit to an unknown URL.
        let buf = build("GET /favicon.ico HTTP/1.1", &[("Host", "h")]);
        assert_eq!(rejected(&buf), HandshakeError::PathNotFound);
        let buf = build("GET /ws HTTP/1.1", &[("Host", "h")]);
        assert_eq!(rejected(&buf), HandshakeError::MissingUpgrade);
    }

    // ---- item 7 and section 4.2.2: Origin ----

    fn origin_cfg() -> HandshakeConfig {
        HandshakeConfig {
            allowed_origins: vec!["https://chat.example.com".into()],
            ..test_cfg()
        }
    }

    #[test]
    fn request_without_origin_is_allowed() {
        assert!(parse_with(&minimal(), &origin_cfg()).unwrap().is_some());
    }

    #[test]
    fn origin_not_in_allowlist_gets_403() {
        let buf = with(&[("Origin", "https://evil.example.com")]);
        let error = parse_with(&buf, &origin_cfg()).unwrap_err();
        assert_eq!(error, HandshakeError::OriginNotAllowed);
        assert!(response_of(error).starts_with("HTTP/1.1 403 Forbidden\r\n"));
        let buf = with(&[("Origin", "null")]);
        assert_eq!(parse_with(&buf, &origin_cfg()), Err(HandshakeError::OriginNotAllowed));
    }

    #[test]
    fn origin_match_is_ascii_case_insensitive() {
        let buf = with(&[("Origin", "HTTPS://Chat.Example.COM")]);
        let request = parse_with(&buf, &origin_cfg()).unwrap().unwrap();
        assert_eq!(request.origin(), Some("HTTPS://Chat.Example.COM"));
    }

    #[test]
    fn empty_allowlist_accepts_any_origin() {
        assert_eq!(
            accepted(&with(&[("Origin", "https://anything")])).origin(),
            Some("https://anything")
        );
    }

    #[test]
    fn rejects_duplicate_origin() {
        let buf = with(&[
            ("Origin", "https://chat.example.com"),
            ("Origin", "https://evil.example.com"),
        ]);
        assert_eq!(rejected(&buf), HandshakeError::DuplicateOrigin);
    }

    #[test]
    fn origin_is_checked_after_the_handshake_headers() {
        let buf = without("Sec-WebSocket-Key");
        let buf = [&buf[..buf.len() - 2], b"Origin: https://evil\r\n\r\n"].concat();
        assert_eq!(parse_with(&buf, &origin_cfg()), Err(HandshakeError::MissingKey));
    }

    // ---- Header handling ----

    #[test]
    fn header_names_are_case_insensitive() {
        let headers = [
            ("HOST", "h"),
            ("uPgRaDe", "websocket"),
            ("connection", "upgrade"),
            ("SEC-WEBSOCKET-KEY", KEY),
            ("sec-websocket-version", "13"),
        ];
        accepted(&build("GET /ws HTTP/1.1", &headers));
    }

    #[test]
    fn every_header_we_read_is_recognised_in_any_case() {
        let table = [
            ("Host", Known::Host),
            ("Upgrade", Known::Upgrade),
            ("Connection", Known::Connection),
            ("Sec-WebSocket-Key", Known::Key),
            ("Sec-WebSocket-Version", Known::Version),
            ("Sec-WebSocket-Protocol", Known::Protocol),
            ("Sec-WebSocket-Extensions", Known::Extensions),
            ("Origin", Known::Origin),
            ("Authorization", Known::Authorization),
            ("User-Agent", Known::UserAgent),
            ("X-Forwarded-For", Known::ForwardedFor),
            ("X-Real-IP", Known::RealIp),
            ("Forwarded", Known::Forwarded),
            ("Content-Length", Known::ContentLength),
            ("Transfer-Encoding", Known::TransferEncoding),
        ];
        for (name, known) in table {
            assert_eq!(Known::classify(name), Some(known), "{name}");
            assert_eq!(Known::classify(&name.to_ascii_lowercase()), Some(known), "{name}");
            assert_eq!(Known::classify(&name.to_ascii_uppercase()), Some(known), "{name}");
        }
        for name in ["Hosts", "Origin2", "Sec-WebSocket-Keys", "Accept", "X-Real-IPv6"] {
            assert_eq!(Known::classify(name), None, "{name}");
        }
    }

    #[test]
    fn case_folding_compare_matches_exactly_the_case_variants() {
        // Every byte httparse lets into a header name or value, against every byte our
        // lowercase targets use: the bit trick must agree with plain case folding.
        let field_bytes = (0u8..=255).filter(|&b| b == b'\t' || (b >= b' ' && b != 0x7f));
        for b in field_bytes {
            for l in (b'a'..=b'z').chain(b'0'..=b'9').chain([b'-']) {
                assert_eq!(eq_lowercase(&[b], &[l]), b.to_ascii_lowercase() == l, "{b:#x} {l:#x}");
            }
        }
        assert!(eq_lowercase(b"Sec-WebSocket-Key", b"sec-websocket-key"));
        assert!(!eq_lowercase(b"Sec-WebSocket-Ke", b"sec-websocket-key"));
        assert!(!eq_lowercase(b"sec_websocket_key", b"sec-websocket-key"));
    }

    #[test]
    fn non_utf8_value_in_a_read_header_is_400() {
        let mut buf = with(&[("User-Agent", "caf\u{e9}")]);
        let at = buf.windows(2).position(|w| w == "\u{e9}".as_bytes()).unwrap();
        buf.splice(at..at + 2, [0xE9]); // Latin-1, not UTF-8
        assert_eq!(rejected(&buf), HandshakeError::NonUtf8Header);
    }

    #[test]
    fn non_utf8_value_in_an_ignored_header_is_fine() {
        let mut buf = with(&[("X-Latin1", "caf\u{e9}")]);
        let at = buf.windows(2).position(|w| w == "\u{e9}".as_bytes()).unwrap();
        buf.splice(at..at + 2, [0xE9]);
        accepted(&buf);
    }

    #[test]
    fn request_declaring_a_body_is_400() {
        assert_eq!(
            rejected(&with(&[("Content-Length", "5")])),
            HandshakeError::UnexpectedBody
        );
        assert_eq!(
            rejected(&with(&[("Transfer-Encoding", "chunked")])),
            HandshakeError::UnexpectedBody
        );
        accepted(&with(&[("Content-Length", "0")]));
    }

    #[test]
    fn informational_headers_are_exposed_raw() {
        let buf = with(&[
            ("Authorization", "Bearer abc.def"),
            ("User-Agent", "bot/1.0"),
            ("X-Forwarded-For", "203.0.113.7, 10.0.0.1"),
            ("X-Real-IP", "203.0.113.7"),
            ("Forwarded", "for=203.0.113.7;proto=https"),
        ]);
        let request = accepted(&buf);
        assert_eq!(request.authorization(), Some("Bearer abc.def"));
        assert_eq!(request.user_agent(), Some("bot/1.0"));
        assert_eq!(request.forwarded_for(), Some("203.0.113.7, 10.0.0.1"));
        assert_eq!(request.x_real_ip(), Some("203.0.113.7"));
        assert_eq!(request.forwarded(), Some("for=203.0.113.7;proto=https"));
    }

    #[test]
    fn forwarding_headers_last_line_wins_and_all_lines_are_listed() {
        let buf = with(&[("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.7")]);
        let request = accepted(&buf);
        assert_eq!(request.forwarded_for(), Some("203.0.113.7"));
        let lines: Vec<&[u8]> = request
            .headers()
            .filter(|(name, _)| name.eq_ignore_ascii_case("x-forwarded-for"))
            .map(|(_, value)| value)
            .collect();
        assert_eq!(lines, [&b"6.6.6.6"[..], b"203.0.113.7"]);
    }

    #[test]
    fn rejects_duplicate_authorization() {
        let buf = with(&[("Authorization", "Bearer a"), ("Authorization", "Bearer b")]);
        assert_eq!(rejected(&buf), HandshakeError::DuplicateAuthorization);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn case_folding_compare_agrees_with_std(
            target in prop::sample::select(vec![
                "host", "upgrade", "websocket", "connection", "sec-websocket-key",
                "sec-websocket-extensions", "x-forwarded-for", "a", "0123456789-abcdefghij",
            ]),
            flips in prop::collection::vec(any::<bool>(), 24),
            change in prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
        ) {
            let mut candidate: Vec<u8> = target
                .bytes()
                .zip(&flips)
                .map(|(b, &flip)| if flip { b.to_ascii_uppercase() } else { b })
                .collect();
            if let Some((index, byte)) = change {
                // Only bytes httparse admits in a name or value.
                if byte == b'\t' || (byte >= b' ' && byte != 0x7f) {
                    let at = index.index(candidate.len());
                    candidate[at] = byte;
                }
            }
            prop_assert_eq!(
                eq_lowercase(&candidate, target.as_bytes()),
                candidate.eq_ignore_ascii_case(target.as_bytes())
            );
        }
    }
}
