//! [`HandshakeError`]: every way an upgrade request is refused, and the answer to each.
//!
//! - In: a variant, produced by `request.rs` (limits and syntax, decided on partial
//!   input) or `validate.rs` (the RFC 6455 rules, on a complete request).
//! - Out: its HTTP [`Status`], metric label and response body (one table,
//!   `HandshakeError::describe`, so the three cannot drift apart), and the complete
//!   error response, appended to the caller's buffer by
//!   [`HandshakeError::write_response`].

use std::fmt;

#[cfg(doc)] // for the doc links only
use super::HandshakeConfig;
use super::SUPPORTED_VERSION;
use super::response::{Status, write_error_response};
#[cfg(doc)] // for the doc links only
use crate::limits::Limits;

/// Why an upgrade request was refused. Each variant is one misbehaviour; its
/// [`status`](Self::status) is the HTTP answer, its [`label`](Self::label) the metric
/// label and its [`reason`](Self::reason) the response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeError {
    /// httparse refused the request line or a header line (bad byte, bad line ending,
    /// unknown HTTP version). 400.
    MalformedRequest,
    /// The request line is longer than [`Limits::max_request_line_bytes`]. 414.
    RequestLineTooLong,
    /// No end of the header section within [`Limits::max_header_bytes`]. 431.
    HeadersTooLarge,
    /// More headers than [`Limits::max_headers`]. 431.
    TooManyHeaders,
    /// The method is not `GET` (methods are case-sensitive). 405.
    MethodNotGet,
    /// HTTP/1.0: RFC 6455 requires HTTP/1.1 or later. 400.
    Http10,
    /// The target is neither an absolute path nor an `http(s)` absolute URI, or has a
    /// fragment. 400.
    InvalidTarget,
    /// No `Host` header. 400.
    MissingHost,
    /// More than one `Host` header. 400.
    DuplicateHost,
    /// `Host` (or the authority of an absolute-form target) is empty or has bytes no
    /// host can contain. 400.
    InvalidHost,
    /// `Transfer-Encoding`, or `Content-Length` other than 0. 400.
    UnexpectedBody,
    /// The path is not one of [`HandshakeConfig::paths`]. 404.
    PathNotFound,
    /// No `Upgrade` header. 400.
    MissingUpgrade,
    /// `Upgrade` does not list `websocket`. 400.
    NotWebSocketUpgrade,
    /// `Connection` is missing or does not list `upgrade`. 400.
    MissingConnectionUpgrade,
    /// No `Sec-WebSocket-Version`. 426.
    MissingVersion,
    /// More than one `Sec-WebSocket-Version`. 400.
    DuplicateVersion,
    /// `Sec-WebSocket-Version` is not `13`. 426.
    UnsupportedVersion,
    /// No `Sec-WebSocket-Key`. 400.
    MissingKey,
    /// More than one `Sec-WebSocket-Key`. 400.
    DuplicateKey,
    /// `Sec-WebSocket-Key` is not canonical base64 of 16 bytes. 400.
    InvalidKey,
    /// `Sec-WebSocket-Protocol` has no token or an element that is not a token. 400.
    MalformedProtocols,
    /// `Sec-WebSocket-Extensions` does not follow RFC 6455 section 9.1. 400.
    MalformedExtensions,
    /// More than one `Origin`. 400.
    DuplicateOrigin,
    /// `Origin` is not in [`HandshakeConfig::allowed_origins`]. 403.
    OriginNotAllowed,
    /// More than one `Authorization`. 400.
    DuplicateAuthorization,
    /// A header we expose as text is not UTF-8. 400.
    NonUtf8Header,
}

impl HandshakeError {
    /// Every variant, so metrics can register each label at start-up.
    pub const ALL: [HandshakeError; 27] = [
        HandshakeError::MalformedRequest,
        HandshakeError::RequestLineTooLong,
        HandshakeError::HeadersTooLarge,
        HandshakeError::TooManyHeaders,
        HandshakeError::MethodNotGet,
        HandshakeError::Http10,
        HandshakeError::InvalidTarget,
        HandshakeError::MissingHost,
        HandshakeError::DuplicateHost,
        HandshakeError::InvalidHost,
        HandshakeError::UnexpectedBody,
        HandshakeError::PathNotFound,
        HandshakeError::MissingUpgrade,
        HandshakeError::NotWebSocketUpgrade,
        HandshakeError::MissingConnectionUpgrade,
        HandshakeError::MissingVersion,
        HandshakeError::DuplicateVersion,
        HandshakeError::UnsupportedVersion,
        HandshakeError::MissingKey,
        HandshakeError::DuplicateKey,
        HandshakeError::InvalidKey,
        HandshakeError::MalformedProtocols,
        HandshakeError::MalformedExtensions,
        HandshakeError::DuplicateOrigin,
        HandshakeError::OriginNotAllowed,
        HandshakeError::DuplicateAuthorization,
        HandshakeError::NonUtf8Header,
    ];

    /// One row per variant: status, metric label, response body. Kept in one table so
    /// the three cannot drift apart.
    #[rustfmt::skip]
    const fn describe(self) -> (Status, &'static str, &'static str) {
        use HandshakeError as E;
        use Status as S;
        match self {
            E::MalformedRequest         => (S::BadRequest,           "malformed_request",          "malformed HTTP request"),
            E::RequestLineTooLong       => (S::UriTooLong,           "request_line_too_long",      "request line too long"),
            E::HeadersTooLarge          => (S::HeaderFieldsTooLarge, "headers_too_large",          "request header section too large"),
            E::TooManyHeaders           => (S::HeaderFieldsTooLarge, "too_many_headers",           "too many request headers"),
            E::MethodNotGet             => (S::MethodNotAllowed,     "method_not_get",             "a WebSocket upgrade must use GET"),
            E::Http10                   => (S::BadRequest,           "http_1_0",                   "a WebSocket upgrade needs HTTP/1.1"),
            E::InvalidTarget            => (S::BadRequest,           "invalid_target",             "invalid request target"),
            E::MissingHost              => (S::BadRequest,           "missing_host",               "missing Host header"),
            E::DuplicateHost            => (S::BadRequest,           "duplicate_host",             "more than one Host header"),
            E::InvalidHost              => (S::BadRequest,           "invalid_host",               "invalid Host header"),
            E::UnexpectedBody           => (S::BadRequest,           "unexpected_body",            "an upgrade request must not have a body"),
            E::PathNotFound             => (S::NotFound,             "path_not_found",             "no WebSocket endpoint at this path"),
            E::MissingUpgrade           => (S::BadRequest,           "missing_upgrade",            "missing Upgrade header"),
            E::NotWebSocketUpgrade      => (S::BadRequest,           "not_websocket_upgrade",      "Upgrade header does not list websocket"),
            E::MissingConnectionUpgrade => (S::BadRequest,           "missing_connection_upgrade", "Connection header does not list upgrade"),
            E::MissingVersion           => (S::UpgradeRequired,      "missing_version",            "missing Sec-WebSocket-Version header"),
            E::DuplicateVersion         => (S::BadRequest,           "duplicate_version",          "more than one Sec-WebSocket-Version header"),
            E::UnsupportedVersion       => (S::UpgradeRequired,      "unsupported_version",        "unsupported WebSocket version"),
            E::MissingKey               => (S::BadRequest,           "missing_key",                "missing Sec-WebSocket-Key header"),
            E::DuplicateKey             => (S::BadRequest,           "duplicate_key",              "more than one Sec-WebSocket-Key header"),
            E::InvalidKey               => (S::BadRequest,           "invalid_key",                "Sec-WebSocket-Key is not base64 of 16 bytes"),
            E::MalformedProtocols       => (S::BadRequest,           "malformed_protocols",        "malformed Sec-WebSocket-Protocol header"),
            E::MalformedExtensions      => (S::BadRequest,           "malformed_extensions",       "malformed Sec-WebSocket-Extensions header"),
            E::DuplicateOrigin          => (S::BadRequest,           "duplicate_origin",           "more than one Origin header"),
            E::OriginNotAllowed         => (S::Forbidden,            "origin_not_allowed",         "origin not allowed"),
            E::DuplicateAuthorization   => (S::BadRequest,           "duplicate_authorization",    "more than one Authorization header"),
            E::NonUtf8Header            => (S::BadRequest,           "non_utf8_header",            "header value is not valid UTF-8"),
        }
    }

    /// The HTTP status to answer with.
    pub const fn status(self) -> Status {
        self.describe().0
    }

    /// A short human reason, used as the response body.
    pub const fn reason(self) -> &'static str {
        self.describe().2
    }

    /// A snake_case metric label, unique per variant.
    pub const fn label(self) -> &'static str {
        self.describe().1
    }

    /// Appends the complete error response, with the extra headers its status needs:
    /// `Allow: GET` on 405; `Upgrade: websocket` and `Sec-WebSocket-Version: 13` on 426;
    /// `Sec-WebSocket-Version: 13` on a duplicate version (so the client still learns
    /// what we speak). The caller closes the connection after sending it.
    pub fn write_response(self, out: &mut Vec<u8>) {
        let extra: &[(&str, &str)] = match self {
            HandshakeError::MethodNotGet => &[("Allow", "GET")],
            HandshakeError::MissingVersion | HandshakeError::UnsupportedVersion => {
                &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", SUPPORTED_VERSION)]
            }
            HandshakeError::DuplicateVersion => &[("Sec-WebSocket-Version", SUPPORTED_VERSION)],
            _ => &[],
        };
        write_error_response(out, self.status(), self.reason(), extra);
    }

    pub(super) fn from_httparse(error: httparse::Error) -> Self {
        match error {
            httparse::Error::TooManyHeaders => HandshakeError::TooManyHeaders,
            _ => HandshakeError::MalformedRequest,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for HandshakeError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::handshake::testutil::*;

    // ---- Errors and responses ----

    #[test]
    fn every_error_has_a_distinct_snake_case_label() {
        let mut labels: Vec<&str> = HandshakeError::ALL.iter().map(|e| e.label()).collect();
        assert!(labels.iter().all(|l| {
            l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }));
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), HandshakeError::ALL.len());
    }

    #[test]
    fn error_statuses_match_the_documented_table() {
        use HandshakeError as E;
        for error in HandshakeError::ALL {
            let expected = match error {
                E::MethodNotGet => 405,
                E::RequestLineTooLong => 414,
                E::HeadersTooLarge | E::TooManyHeaders => 431,
                E::PathNotFound => 404,
                E::OriginNotAllowed => 403,
                E::MissingVersion | E::UnsupportedVersion => 426,
                _ => 400,
            };
            assert_eq!(error.status().code(), expected, "{error:?}");
            assert_eq!(error.to_string(), error.reason());
            assert!(!error.reason().is_empty());
        }
    }

    #[test]
    fn every_error_response_is_well_formed() {
        for error in HandshakeError::ALL {
            let response = response_of(error);
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            let status = error.status();
            assert!(head.starts_with(&format!("HTTP/1.1 {} {}\r\n", status.code(), status.reason_phrase())));
            assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
            assert!(head.contains("\r\nConnection: "));
            assert_eq!(body, format!("{}\n", error.reason()));
        }
    }

    #[test]
    fn error_response_bytes_are_exact() {
        assert_eq!(
            response_of(HandshakeError::MissingHost),
            "HTTP/1.1 400 Bad Request\r\n\
             Connection: close\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 20\r\n\
             \r\n\
             missing Host header\n"
        );
    }

    #[test]
    fn appends_to_the_callers_buffer() {
        let mut out = b"previous".to_vec();
        HandshakeError::MissingKey.write_response(&mut out);
        assert!(out.starts_with(b"previousHTTP/1.1 400"));
        let mut out = b"previous".to_vec();
        accepted(&minimal()).write_response(&mut out);
        assert!(out.starts_with(b"previousHTTP/1.1 101"));
    }
}
