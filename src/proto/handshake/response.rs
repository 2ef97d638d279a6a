//! What the gateway sends back: the `101 Switching Protocols` and the error responses.
//!
//! - In: a validated [`Request`] (for the 101), or a [`Status`], a reason and extra
//!   headers (for an error; [`HandshakeError::write_response`] and later layers such as
//!   auth and the connection cap call [`write_error_response`]).
//! - Out: the complete response bytes, appended to a `Vec` the caller owns. Extra
//!   headers that could split the response (CR, LF, a name that is not a token) are
//!   dropped, never written.
//!
//! [`HandshakeError::write_response`]: super::HandshakeError::write_response

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest as _, Sha1};

use super::request::Request;
use super::syntax::{is_field_value, is_token};
use super::{ACCEPT_KEY_LEN, WEBSOCKET_GUID};
#[cfg(doc)] // for the doc links only
use crate::limits::Limits;

/// An HTTP status the gateway answers a failed upgrade with.
///
/// The handshake produces 400, 403, 404, 405, 414, 426 and 431. The others are for
/// later layers, written with [`write_error_response`]; each variant says which extra
/// header its response needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// 400: the request is not a well-formed WebSocket upgrade.
    BadRequest,
    /// 401: the auth layer refused the credentials. Send
    /// `WWW-Authenticate: <scheme> realm="..."` (RFC 9110 section 15.5.2 requires it).
    Unauthorized,
    /// 403: the `Origin` is not allowed (or a later layer forbids the client).
    Forbidden,
    /// 404: no WebSocket endpoint at this path.
    NotFound,
    /// 405: not a `GET`. Carries `Allow: GET` (RFC 9110 section 15.5.6 requires it).
    MethodNotAllowed,
    /// 414: the request line is longer than [`Limits::max_request_line_bytes`].
    UriTooLong,
    /// 426: a WebSocket version other than 13 (or none). Carries
    /// `Sec-WebSocket-Version: 13` and `Upgrade: websocket`.
    UpgradeRequired,
    /// 429: the rate limiter refused the client. Send `Retry-After: <seconds>`.
    TooManyRequests,
    /// 431: the header section or the header count is over its limit.
    HeaderFieldsTooLarge,
    /// 503: the shard is at its connection cap. Send `Retry-After: <seconds>`.
    ServiceUnavailable,
}

impl Status {
    /// The numeric status code.
    pub const fn code(self) -> u16 {
        match self {
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::UriTooLong => 414,
            Status::UpgradeRequired => 426,
            Status::TooManyRequests => 429,
            Status::HeaderFieldsTooLarge => 431,
            Status::ServiceUnavailable => 503,
        }
    }

    /// The reason phrase of the status line (RFC 9110 section 15, RFC 6585).
    pub const fn reason_phrase(self) -> &'static str {
        match self {
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::UriTooLong => "URI Too Long",
            Status::UpgradeRequired => "Upgrade Required",
            Status::TooManyRequests => "Too Many Requests",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::ServiceUnavailable => "Service Unavailable",
        }
    }
}

/// Appends a complete error response that closes the connection:
///
/// ```text
/// HTTP/1.1 <code> <phrase>\r\n
/// Connection: close\r\n
/// Content-Type: text/plain; charset=utf-8\r\n
/// Content-Length: <len(reason) + 1>\r\n
/// <name>: <value>\r\n      (each of extra_headers)
/// \r\n
/// <reason>\n
/// ```
///
/// Later layers pass the header their status needs: `WWW-Authenticate` with 401,
/// `Retry-After` with 429 and 503, for example
/// `write_error_response(&mut out, Status::TooManyRequests, "slow down", &[("Retry-After", "5")])`.
///
/// An extra header whose name is not a token or whose value holds a control byte (CR,
/// LF, NUL, ...) is dropped, never written: a value built from request data must not be
/// able to start a header line of its own. If an `Upgrade` header is among the extra
/// headers, the connection line becomes `Connection: Upgrade, close`, as RFC 9110
/// section 7.8 asks of any sender of `Upgrade`.
pub fn write_error_response(out: &mut Vec<u8>, status: Status, reason: &str, extra_headers: &[(&str, &str)]) {
    let announces_upgrade = extra_headers
        .iter()
        .any(|(name, value)| name.eq_ignore_ascii_case("upgrade") && is_field_value(value));
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, usize::from(status.code()));
    out.push(b' ');
    out.extend_from_slice(status.reason_phrase().as_bytes());
    out.extend_from_slice(if announces_upgrade {
        &b"\r\nConnection: Upgrade, close\r\n"[..]
    } else {
        &b"\r\nConnection: close\r\n"[..]
    });
    out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    push_decimal(out, reason.len() + 1);
    out.extend_from_slice(b"\r\n");
    write_extra_headers(out, extra_headers);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(reason.as_bytes());
    out.push(b'\n');
}
impl Request<'_> {
    /// `Sec-WebSocket-Accept` for this request.
    pub fn accept_key(&self) -> [u8; ACCEPT_KEY_LEN] {
        accept_key(self.key)
    }

    /// Appends the `101 Switching Protocols` response: `Upgrade: websocket`,
    /// `Connection: Upgrade`, `Sec-WebSocket-Accept`, and `Sec-WebSocket-Protocol` if one
    /// was selected. No `Sec-WebSocket-Extensions`: we accept none.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        self.write_response_with_headers(out, &[]);
    }

    /// [`Request::write_response`] plus extra headers (a `Set-Cookie`, say), dropped if
    /// malformed as in [`write_error_response`]. Do not pass the headers the 101 already
    /// has.
    pub fn write_response_with_headers(&self, out: &mut Vec<u8>, extra_headers: &[(&str, &str)]) {
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\n\
              Upgrade: websocket\r\n\
              Connection: Upgrade\r\n\
              Sec-WebSocket-Accept: ",
        );
        out.extend_from_slice(&self.accept_key());
        out.extend_from_slice(b"\r\n");
        if let Some(protocol) = self.selected_protocol {
            out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
            out.extend_from_slice(protocol.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        write_extra_headers(out, extra_headers);
        out.extend_from_slice(b"\r\n");
    }
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key ++ GUID)) (RFC 6455 section
/// 4.2.2). The key is hashed exactly as given, which for a validated request is the
/// header value without surrounding whitespace.
pub fn accept_key(sec_websocket_key: &[u8]) -> [u8; ACCEPT_KEY_LEN] {
    let mut sha1 = Sha1::new();
    sha1.update(sec_websocket_key);
    sha1.update(WEBSOCKET_GUID);
    let digest = sha1.finalize();
    let mut accept = [0u8; ACCEPT_KEY_LEN];
    let written = BASE64
        .encode_slice(digest, &mut accept)
        .expect("a 20-byte digest is 28 bytes of base64, whatever the key");
    debug_assert_eq!(written, ACCEPT_KEY_LEN);
    accept
}

fn write_extra_headers(out: &mut Vec<u8>, headers: &[(&str, &str)]) {
    for (name, value) in headers {
        if !is_token(name) || !is_field_value(value) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20]; // usize::MAX has 20 decimal digits
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::handshake::testutil::*;

    // ---- RFC 6455 section 4.2.2: the 101 ----

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(&accept_key(KEY.as_bytes()), ACCEPT.as_bytes());
        assert_eq!(&accepted(&minimal()).accept_key(), ACCEPT.as_bytes());
    }

    #[test]
    fn response_is_101_with_upgrade_connection_and_accept() {
        assert_eq!(
            upgrade_response(&accepted(&minimal())),
            "HTTP/1.1 101 Switching Protocols\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
             \r\n"
        );
    }

    #[test]
    fn response_has_no_extensions_header() {
        let request = accepted(CHROME);
        assert_eq!(request.extensions().count(), 1);
        assert!(
            !upgrade_response(&request)
                .to_ascii_lowercase()
                .contains("sec-websocket-extensions")
        );
    }

    #[test]
    fn response_echoes_selected_protocol() {
        let response = upgrade_response(&accepted(CHROME));
        assert!(
            response.contains("\r\nSec-WebSocket-Protocol: chat.v2\r\n"),
            "{response}"
        );
        assert_eq!(response.matches("Sec-WebSocket-Protocol").count(), 1);
    }

    #[test]
    fn response_omits_protocol_when_none_selected() {
        let buf = with(&[("Sec-WebSocket-Protocol", "mqtt")]);
        let request = accepted(&buf);
        assert_eq!(request.selected_protocol(), None);
        assert!(!upgrade_response(&request).contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn response_appends_extra_headers_and_drops_malformed_ones() {
        let buf = minimal();
        let mut out = Vec::new();
        accepted(&buf).write_response_with_headers(
            &mut out,
            &[
                ("Set-Cookie", "sid=1"),
                ("X-Evil", "a\r\nInjected: 1"),
                ("Bad Name", "x"),
            ],
        );
        let response = String::from_utf8(out).unwrap();
        assert!(response.ends_with("\r\nSet-Cookie: sid=1\r\n\r\n"), "{response}");
        assert!(!response.contains("Injected") && !response.contains("Bad Name"));
    }

    #[test]
    fn write_error_response_serves_later_layers() {
        let mut out = Vec::new();
        write_error_response(
            &mut out,
            Status::Unauthorized,
            "bad token",
            &[("WWW-Authenticate", "Bearer realm=\"ws\"")],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 401 Unauthorized\r\n\
             Connection: close\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 10\r\n\
             WWW-Authenticate: Bearer realm=\"ws\"\r\n\
             \r\n\
             bad token\n"
        );
        let mut out = Vec::new();
        write_error_response(&mut out, Status::TooManyRequests, "slow down", &[("Retry-After", "5")]);
        assert!(out.starts_with(b"HTTP/1.1 429 Too Many Requests\r\n"));
        assert!(out.ends_with(b"Retry-After: 5\r\n\r\nslow down\n"));
        let mut out = Vec::new();
        write_error_response(&mut out, Status::ServiceUnavailable, "full", &[("Retry-After", "30")]);
        assert!(out.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"));
    }

    #[test]
    fn write_error_response_drops_headers_that_would_split_the_response() {
        let mut out = Vec::new();
        write_error_response(
            &mut out,
            Status::Forbidden,
            "no",
            &[
                ("Retry-After", "1\r\nSet-Cookie: x=1"),
                ("Bad:Name", "1"),
                ("", "1"),
                ("X-Ok", "yes"),
            ],
        );
        let response = String::from_utf8(out).unwrap();
        assert!(!response.contains("Set-Cookie") && !response.contains("Bad:Name"));
        assert!(response.contains("\r\nX-Ok: yes\r\n\r\n"));
    }

    #[test]
    fn status_codes_and_phrases() {
        let table = [
            (Status::BadRequest, 400, "Bad Request"),
            (Status::Unauthorized, 401, "Unauthorized"),
            (Status::Forbidden, 403, "Forbidden"),
            (Status::NotFound, 404, "Not Found"),
            (Status::MethodNotAllowed, 405, "Method Not Allowed"),
            (Status::UriTooLong, 414, "URI Too Long"),
            (Status::UpgradeRequired, 426, "Upgrade Required"),
            (Status::TooManyRequests, 429, "Too Many Requests"),
            (Status::HeaderFieldsTooLarge, 431, "Request Header Fields Too Large"),
            (Status::ServiceUnavailable, 503, "Service Unavailable"),
        ];
        for (status, code, phrase) in table {
            assert_eq!((status.code(), status.reason_phrase()), (code, phrase));
        }
    }
}
