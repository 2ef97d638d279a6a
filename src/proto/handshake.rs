//! The HTTP/1.1 upgrade request (RFC 6455 section 4.2): parse, validate, answer.
//!
//! A connection starts as HTTP: the client sends a `GET` with `Upgrade: websocket` and
//! the server answers `101 Switching Protocols` or an error status. This module turns
//! the bytes read so far into a validated [`Request`] or a [`HandshakeError`], and
//! writes the answer into a `Vec` the caller owns. It does no I/O and keeps no state
//! between calls: the caller appends what it read to its buffer and calls
//! [`parse_request`] again. `Ok(None)` means "read more"; it is never an error.
//!
//! # Data flow
//!
//! - In: `&[u8]` (everything read so far, possibly followed by the client's first
//!   frames), the shard's [`Limits`] and a [`HandshakeConfig`].
//! - Out: `Ok(Some(Request))` borrowing the buffer, `Ok(None)`, or a
//!   [`HandshakeError`] whose [`status`](HandshakeError::status) is the HTTP answer.
//!   [`Request::header_len`] says where the request ended and frames begin.
//! - Answer: [`Request::write_response`] (the 101) or
//!   [`HandshakeError::write_response`]; both append to the caller's buffer. Later
//!   layers (auth 401, rate limit 429, connection cap 503) use [`write_error_response`].
//!
//! Parsing allocates nothing: header slots live on the stack ([`HEADER_SLOTS_MAX`]),
//! the [`Request`] borrows the buffer, and the views that can span several header lines
//! ([`Request::headers`], [`Request::offered_protocols`], [`Request::extensions`]) walk
//! the stored header bytes again when asked. Only [`Request::query_param`] may
//! allocate, when a value needs percent-decoding, and then at most the length of the
//! query (bounded by [`Limits::max_request_line_bytes`]).
//!
//! # Limits, checked on partial input
//!
//! Every decision is taken on `buf[..max_header_bytes]`, so nothing past the limit can
//! change the answer and a caller never needs to buffer more than the limit:
//!
//! 1. Request line (without its line ending) longer than
//!    [`Limits::max_request_line_bytes`]: `414`, decided as soon as that many bytes plus
//!    two arrive without a line end. A syntax error earlier in the line wins (`400`), so
//!    a prefix of the input never gets a different error than the whole input.
//! 2. Syntax errors found by httparse: `400`; more than [`Limits::max_headers`] headers:
//!    `431`, both as soon as the offending bytes arrive.
//! 3. No end of the header section within [`Limits::max_header_bytes`]: `431`.
//!
//! # Order of the checks on a complete request
//!
//! The first failing check decides the status. The order puts what is wrong with the
//! HTTP request before what is wrong with the WebSocket handshake, and the policy
//! decision (origin) last, so the status tells the client the most useful thing:
//!
//! | # | check | error | status |
//! |---|---|---|---|
//! | 1 | method is `GET` | `MethodNotGet` | 405 + `Allow: GET` |
//! | 2 | HTTP/1.1 (httparse parses only 1.0 and 1.1) | `Http10` | 400 |
//! | 3 | target is origin-form, or absolute-form `http(s)://authority/path` | `InvalidTarget` | 400 |
//! | 4 | exactly one valid `Host` (RFC 9112 section 3.2, for every HTTP/1.1 request) | `MissingHost`, `DuplicateHost`, `InvalidHost` | 400 |
//! | 5 | no request body declared | `UnexpectedBody` | 400 |
//! | 6 | path is one of [`HandshakeConfig::paths`] | `PathNotFound` | 404 |
//! | 7 | `Upgrade` lists `websocket` | `MissingUpgrade`, `NotWebSocketUpgrade` | 400 |
//! | 8 | `Connection` lists `upgrade` | `MissingConnectionUpgrade` | 400 |
//! | 9 | `Sec-WebSocket-Version: 13`, once | `MissingVersion`, `UnsupportedVersion` (426); `DuplicateVersion` (400) | 426 / 400 |
//! | 10 | one `Sec-WebSocket-Key`, base64 of 16 bytes | `MissingKey`, `DuplicateKey`, `InvalidKey` | 400 |
//! | 11 | `Sec-WebSocket-Protocol`, `Sec-WebSocket-Extensions` well formed | `MalformedProtocols`, `MalformedExtensions` | 400 |
//! | 12 | at most one `Origin`, and allowed | `DuplicateOrigin` (400), `OriginNotAllowed` (403) | 400 / 403 |
//! | 13 | at most one `Authorization`; headers we expose as text are UTF-8 | `DuplicateAuthorization`, `NonUtf8Header` | 400 |
//!
//! Why this order: the path (6) comes before the WebSocket headers so that a plain
//! browser visit to an unknown URL gets 404, not a complaint about `Upgrade`. The
//! version (9) comes before the key because a client of another protocol version may
//! format its key differently; it needs to hear "we speak 13" (RFC 6455 section 4.4).
//! The origin (12) is a policy decision, taken only on a handshake that is otherwise
//! valid, so a 403 really means "you may not", not "you are broken".
//!
//! # Decisions where the RFCs leave a choice
//!
//! - Missing `Sec-WebSocket-Version`: 426 with `Sec-WebSocket-Version: 13`, like a
//!   wrong one. A client without the header is most likely a pre-RFC draft client, and
//!   426 tells it which version to retry with (RFC 6455 section 4.4).
//! - Missing `Upgrade`/`Connection` token: 400 (RFC 6455 section 4.2.1 gives 400 as the
//!   example). Every 426 carries `Upgrade: websocket` because RFC 9110 section 15.5.22
//!   requires an `Upgrade` header in a 426, and hence `Connection: Upgrade, close`
//!   (RFC 9110 section 7.8).
//! - Absolute-form targets (`GET http://host/ws HTTP/1.1`) are accepted, as RFC 6455
//!   section 4.2.1 item 1 and RFC 9112 section 3.2.2 require; the path is taken from the
//!   target and [`Request::host`] is the target's authority (the `Host` header must
//!   still be present and valid). Other schemes, `*` and authority-form are 400.
//! - A fragment (`#`) in the target is 400: clients never send one (RFC 9112 section 3.2).
//! - Malformed `Sec-WebSocket-Extensions`: 400, not ignored. RFC 6455 section 4.2.1 asks
//!   for an error when the handshake does not match the grammar; a client that cannot
//!   write its extension header is broken in ways we would rather not discover in the
//!   frame layer; and it lets [`Request::extensions`] be infallible. We negotiate no
//!   extension, so every well-formed offer is declined by omission.
//! - Subprotocols: empty list elements (`chat, , superchat`) are skipped, because RFC
//!   9110 section 5.6.1.2 says a recipient MUST accept them; a header with no token at
//!   all, or an element that is not a token, is 400. Names match case-sensitively (they
//!   are opaque tokens); duplicates in the offer are tolerated.
//! - The key must be canonical base64 (RFC 4648 section 4: standard alphabet, `==`
//!   padding, zero pad bits): the encoding of 16 bytes is exactly that.
//! - A request that declares a body (`Transfer-Encoding`, or a `Content-Length` other
//!   than 0) is 400: the bytes after the header are WebSocket frames, and a declared
//!   body would make us and an intermediary disagree on where they start.
//! - Duplicate `Host`, `Sec-WebSocket-Key`, `Sec-WebSocket-Version` (RFC 6455 section
//!   11.3), `Origin` (RFC 6454 section 7.3) and `Authorization` (credentials must not be
//!   ambiguous) are 400. For the informational headers `User-Agent`, `X-Forwarded-For`,
//!   `X-Real-IP` and `Forwarded` the last line wins: a proxy that adds a line adds it at
//!   the end, so the last line is the one written by the proxy nearest to us.
//!   [`Request::headers`] yields every line for callers that need them all.
//! - A request with no `Origin` is allowed even with an allow-list: browsers always
//!   send `Origin`, so its absence means a non-browser client, which the origin check
//!   (a defence against cross-site pages) does not concern.
//! - Non-UTF-8 bytes in a header we read as text: 400. Headers we do not read (cookies,
//!   accept-language, ...) may carry any bytes httparse accepts.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::fmt;
use std::mem::MaybeUninit;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest as _, Sha1};

use crate::limits::{self, Limits};

/// RFC 6455 section 1.3: appended to the client's key before hashing, so that only a
/// WebSocket server can produce the accept value.
pub const WEBSOCKET_GUID: &[u8; 36] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The one protocol version we speak (RFC 6455 section 4.1). Sent back in
/// `Sec-WebSocket-Version` when a client asks for another or for none.
pub const SUPPORTED_VERSION: &str = "13";

/// Length of `Sec-WebSocket-Accept`: base64 of a 20-byte SHA-1 digest.
pub const ACCEPT_KEY_LEN: usize = 28;

/// Length of a valid `Sec-WebSocket-Key`: base64 of a 16-byte nonce, with its `==`.
const KEY_LEN: usize = 24;
/// What the key must decode to (RFC 6455 section 4.1, client requirement 7).
const KEY_NONCE_LEN: usize = 16;

/// Header slots on the stack for one parse; [`Limits::max_headers`] above this is
/// treated as this. The slots are `MaybeUninit`, so their number costs stack (32 bytes
/// each, 4 KiB in all) but no time; a stack array rather than a `Vec` because the
/// parser runs again on every read of a partial request and must not allocate. Browsers
/// send about 15 headers, and `Limits` defaults to 64.
pub const HEADER_SLOTS_MAX: usize = 128;
const _: () = assert!(limits::MAX_HEADERS <= HEADER_SLOTS_MAX);

/// The path [`HandshakeConfig::default`] serves.
pub const DEFAULT_PATH: &str = "/ws";

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

    fn from_httparse(error: httparse::Error) -> Self {
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

/// What the handshake accepts: one per listener, shared by all its connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// Request paths that lead to a WebSocket, matched exactly against the path without
    /// its query: no percent-decoding, no case folding, no trailing-slash folding, so
    /// one resource has one name. Any other path gets 404.
    pub paths: Vec<String>,
    /// Allowed `Origin` values (serialized origins such as `https://chat.example.com`),
    /// matched ASCII case-insensitively. Empty allows any origin. A request without
    /// `Origin` is always allowed: browsers always send it, so its absence means a
    /// non-browser client, which this cross-site defence does not concern.
    pub allowed_origins: Vec<String>,
    /// The subprotocols we speak, most preferred first. The first of these that the
    /// client offered is selected; if none was offered, the handshake proceeds without
    /// a subprotocol (RFC 6455 section 4.2.2) and the application decides.
    pub subprotocols: Vec<String>,
}

impl Default for HandshakeConfig {
    /// Serves [`DEFAULT_PATH`] (`/ws`) only, to any origin, with no subprotocol. Only
    /// `/ws` so that the gateway does not claim `/`, which a load balancer or a health
    /// check may want.
    fn default() -> Self {
        Self {
            paths: vec![DEFAULT_PATH.to_owned()],
            allowed_origins: Vec::new(),
            subprotocols: Vec::new(),
        }
    }
}

/// A validated upgrade request, borrowing the caller's buffer.
///
/// Everything in it has been checked; the methods only read. It holds the header bytes
/// (`buf[..header_len]`) so that the views spanning several header lines can walk them
/// again instead of being stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'b> {
    /// The request line and headers, up to and including the blank line.
    head: &'b [u8],
    /// The path of the target, without the query.
    path: &'b str,
    /// The raw query, after `?`.
    query: Option<&'b str>,
    /// The authority the client asked for: the `Host` header, or the authority of an
    /// absolute-form target (RFC 9112 section 3.2.2).
    host: &'b str,
    /// `Sec-WebSocket-Key`, trimmed and validated; hashed into the accept value.
    key: &'b [u8],
    /// The subprotocol chosen at parse time, so the 101 needs no second pass.
    selected_protocol: Option<&'b str>,
    /// Raw `Origin`, for the application's logs; already checked against the config.
    origin: Option<&'b str>,
    /// Raw `Authorization`, for the auth layer.
    authorization: Option<&'b str>,
    /// Raw `User-Agent` (last line), for logs.
    user_agent: Option<&'b str>,
    /// Raw `X-Forwarded-For` (last line), for the client address behind a proxy.
    forwarded_for: Option<&'b str>,
    /// Raw `X-Real-IP` (last line).
    x_real_ip: Option<&'b str>,
    /// Raw `Forwarded` (RFC 7239, last line).
    forwarded: Option<&'b str>,
}

impl<'b> Request<'b> {
    /// Bytes of the request, line endings and the final blank line included. Bytes of
    /// the buffer past this are the client's first frames.
    pub fn header_len(&self) -> usize {
        self.head.len()
    }

    /// The path of the target, without the query (always starts with `/`).
    pub fn path(&self) -> &'b str {
        self.path
    }

    /// The raw query string (after `?`, not decoded), if the target has one.
    pub fn query(&self) -> Option<&'b str> {
        self.query
    }

    /// The first query parameter named `name`, decoded the way browsers encode forms
    /// (`application/x-www-form-urlencoded`): `+` is a space, `%XX` a byte, and a `%`
    /// not followed by two hex digits stays as it is. Names are decoded too and compared
    /// byte for byte; bytes that do not form UTF-8 become U+FFFD. Borrowed when there is
    /// nothing to decode. Browsers cannot set headers on a WebSocket, so tokens travel
    /// here.
    pub fn query_param(&self, name: &str) -> Option<Cow<'b, str>> {
        let query = self.query?;
        query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(key, _)| FormDecoded::new(key).eq(name.bytes()))
            .map(|(_, value)| form_decode(value))
    }

    /// The authority the client asked for: `Host`, or the authority of an absolute-form
    /// target.
    pub fn host(&self) -> &'b str {
        self.host
    }

    /// `Origin`, if sent (already checked against [`HandshakeConfig::allowed_origins`]).
    pub fn origin(&self) -> Option<&'b str> {
        self.origin
    }

    /// `Authorization`, raw, for the auth layer (there is at most one).
    pub fn authorization(&self) -> Option<&'b str> {
        self.authorization
    }

    /// `User-Agent`, raw (the last line if there are several).
    pub fn user_agent(&self) -> Option<&'b str> {
        self.user_agent
    }

    /// `X-Forwarded-For`, raw. If the header came in several lines this is the last one,
    /// the one written by the nearest proxy; [`Request::headers`] yields them all, and
    /// joining them with `", "` gives the whole list in order.
    pub fn forwarded_for(&self) -> Option<&'b str> {
        self.forwarded_for
    }

    /// `X-Real-IP`, raw (the last line if there are several).
    pub fn x_real_ip(&self) -> Option<&'b str> {
        self.x_real_ip
    }

    /// `Forwarded` (RFC 7239), raw; the last line if there are several, as for
    /// [`Request::forwarded_for`].
    pub fn forwarded(&self) -> Option<&'b str> {
        self.forwarded
    }

    /// Every header line in order, as (name as sent, value without surrounding
    /// whitespace). For headers this type does not expose, such as `Cookie`.
    pub fn headers(&self) -> impl Iterator<Item = (&'b str, &'b [u8])> + use<'b> {
        HeaderLines::new(self.head)
    }

    /// Every subprotocol the client offered, in order, across repeated
    /// `Sec-WebSocket-Protocol` headers.
    pub fn offered_protocols(&self) -> impl Iterator<Item = &'b str> + use<'b> {
        self.headers()
            .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-protocol"))
            // Validated as ASCII tokens at parse time, so this never drops a value.
            .filter_map(|(_, value)| std::str::from_utf8(value).ok())
            .flat_map(|value| value.split(','))
            .map(trim_ows_str)
            .filter(|token| !token.is_empty())
    }

    /// The subprotocol we will speak: the first of [`HandshakeConfig::subprotocols`]
    /// that the client offered, or `None` (the handshake proceeds without one).
    pub fn selected_protocol(&self) -> Option<&'b str> {
        self.selected_protocol
    }

    /// The extensions the client offered, in order, across repeated
    /// `Sec-WebSocket-Extensions` headers. We support none, so all are declined: the
    /// 101 carries no `Sec-WebSocket-Extensions`.
    pub fn extensions(&self) -> impl Iterator<Item = Extension<'b>> + use<'b> {
        self.headers()
            .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-extensions"))
            // Validated at parse time, so neither filter drops anything.
            .filter_map(|(_, value)| std::str::from_utf8(value).ok())
            .flat_map(ExtensionList::new)
            .filter_map(Result::ok)
    }

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

/// One offered extension: `name *( ";" param )` (RFC 6455 section 9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extension<'b> {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: &'b str,
    /// The validated `; param[=value]` text after the name, parsed on demand by
    /// [`Extension::params`] so an extension costs no storage.
    params: &'b str,
}

impl<'b> Extension<'b> {
    /// The parameters, in order, as (name, value). A quoted value is unquoted: borrowed
    /// unless it held backslash escapes.
    pub fn params(&self) -> ExtensionParams<'b> {
        ExtensionParams {
            cursor: Cursor::new(self.params),
        }
    }
}

/// Iterator over the parameters of an [`Extension`].
#[derive(Clone, Debug)]
pub struct ExtensionParams<'b> {
    cursor: Cursor<'b>,
}

impl<'b> Iterator for ExtensionParams<'b> {
    type Item = (&'b str, Option<Cow<'b, str>>);

    fn next(&mut self) -> Option<Self::Item> {
        self.cursor.skip_ows();
        if !self.cursor.eat(b';') {
            return None;
        }
        match param(&mut self.cursor) {
            Some((name, value)) => Some((name, value.map(ParamValue::unescape))),
            None => {
                // Unreachable for a validated extension; stop rather than loop.
                self.cursor.pos = self.cursor.text.len();
                None
            }
        }
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

/// Parses and validates an upgrade request from the bytes read so far.
///
/// - `Ok(None)`: the request is incomplete; read more and call again with the longer
///   buffer. Only returned while `buf.len() < limits.max_header_bytes`.
/// - `Ok(Some(request))`: a valid upgrade; answer with [`Request::write_response`].
///   `buf[request.header_len()..]` are the client's first frames, if any.
/// - `Err(error)`: answer with [`HandshakeError::write_response`] and close.
///
/// Limit errors (414, 431) and syntax errors are returned as soon as the bytes that
/// prove them arrive; the other checks wait for the whole request. The answer for a
/// prefix of `buf` is always `Ok(None)` or the answer for `buf`. See the module docs
/// for the order of the checks.
pub fn parse_request<'b>(
    buf: &'b [u8],
    limits: &Limits,
    cfg: &HandshakeConfig,
) -> Result<Option<Request<'b>>, HandshakeError> {
    // Every decision below looks only at this window, so bytes past the limit can
    // neither change the answer nor make the caller buffer more.
    let window = &buf[..buf.len().min(limits.max_header_bytes)];

    let mut slots = [const { MaybeUninit::<httparse::Header<'b>>::uninit() }; HEADER_SLOTS_MAX];
    let slot_count = limits.max_headers.min(HEADER_SLOTS_MAX);
    let mut request = httparse::Request::new(&mut []);
    let header_len = match request.parse_with_uninit_headers(window, &mut slots[..slot_count]) {
        Ok(httparse::Status::Complete(header_len)) => header_len,
        incomplete => {
            // A request line already proven too long wins over "need more" and over
            // errors found after the line, so the answer does not depend on the split.
            if let Some(error) = request_line_too_long(window, limits.max_request_line_bytes) {
                return Err(error);
            }
            return match incomplete {
                Err(error) => Err(HandshakeError::from_httparse(error)),
                Ok(_) if window.len() == limits.max_header_bytes => Err(HandshakeError::HeadersTooLarge),
                Ok(_) => Ok(None),
            };
        }
    };
    debug_assert!(header_len <= window.len());
    let (Some(method), Some(target), Some(minor_version)) = (request.method, request.path, request.version) else {
        unreachable!("httparse fills in the request line before it reports Complete");
    };
    // httparse accepted the line, so it is exactly `method SP target SP HTTP/1.x`:
    // its length needs no second scan of the bytes.
    let line_len = method.len() + target.len() + " HTTP/1.1 ".len();
    debug_assert_eq!(
        request_line_too_long(window, limits.max_request_line_bytes).is_some(),
        line_len > limits.max_request_line_bytes
    );
    if line_len > limits.max_request_line_bytes {
        return Err(HandshakeError::RequestLineTooLong);
    }
    validate(method, target, minor_version, request.headers, &buf[..header_len], cfg).map(Some)
}

/// Runs the parser on `data` with the default limits and config and panics if one of
/// its invariants does not hold. For fuzzers (cargo-fuzz calls this) and the property
/// tests; not part of the API.
/// A real browser upgrade request (Chrome, `new WebSocket(url, ["chat.v1", "chat.v2"])`),
/// shared by the tests and the benchmarks.
#[doc(hidden)]
pub const SAMPLE_CHROME_REQUEST: &[u8] = b"GET /ws?token=abc%20def&room=lobby HTTP/1.1\r\n\
    Host: chat.example.com\r\n\
    Connection: Upgrade\r\n\
    Pragma: no-cache\r\n\
    Cache-Control: no-cache\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
    Upgrade: websocket\r\n\
    Origin: https://chat.example.com\r\n\
    Sec-WebSocket-Version: 13\r\n\
    Accept-Encoding: gzip, deflate, br, zstd\r\n\
    Accept-Language: en-US,en;q=0.9\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
    Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n\
    \r\n";

#[doc(hidden)]
pub fn fuzz_parse(data: &[u8]) {
    let _ = check_parse_invariants(data, &Limits::default(), &HandshakeConfig::default());
}

/// The invariants [`fuzz_parse`] asserts, for any limits and config.
fn check_parse_invariants<'b>(
    data: &'b [u8],
    limits: &Limits,
    cfg: &HandshakeConfig,
) -> Result<Option<Request<'b>>, HandshakeError> {
    let result = parse_request(data, limits, cfg);
    // Split-input consistency: a prefix needs more bytes or already has the answer.
    for cut in [data.len() / 2, data.len().saturating_sub(1)] {
        let early = parse_request(&data[..cut], limits, cfg);
        assert!(
            early == Ok(None) || early == result,
            "prefix of {cut} bytes gave {early:?}, the whole input {result:?}"
        );
    }
    match &result {
        Ok(Some(request)) => check_request_invariants(data, request, limits, cfg),
        Ok(None) => assert!(
            data.len() < limits.max_header_bytes,
            "need-more at {} bytes, past the header limit",
            data.len()
        ),
        Err(error) => {
            assert!(
                matches!(
                    error.status(),
                    Status::BadRequest
                        | Status::Forbidden
                        | Status::NotFound
                        | Status::MethodNotAllowed
                        | Status::UriTooLong
                        | Status::UpgradeRequired
                        | Status::HeaderFieldsTooLarge
                ),
                "{error:?} maps to a status the handshake never produces"
            );
            let mut out = Vec::new();
            error.write_response(&mut out);
            let status_line = format!("HTTP/1.1 {} ", error.status().code());
            assert!(out.starts_with(status_line.as_bytes()));
            assert!(out.ends_with(format!("\r\n\r\n{}\n", error.reason()).as_bytes()));
        }
    }
    result
}

fn check_request_invariants(data: &[u8], request: &Request<'_>, limits: &Limits, cfg: &HandshakeConfig) {
    let header_len = request.header_len();
    assert!(header_len <= data.len() && header_len <= limits.max_header_bytes);
    assert_eq!(parse_request(&data[..header_len], limits, cfg), Ok(Some(*request)));
    assert_eq!(parse_request(&data[..header_len - 1], limits, cfg), Ok(None));
    assert!(cfg.paths.iter().any(|path| path == request.path()));

    // The header walk agrees with httparse on every line.
    let mut slots = vec![httparse::EMPTY_HEADER; HEADER_SLOTS_MAX];
    let mut reference = httparse::Request::new(&mut slots);
    assert_eq!(
        reference.parse(&data[..header_len]),
        Ok(httparse::Status::Complete(header_len))
    );
    let expected: Vec<(&str, &[u8])> = reference
        .headers
        .iter()
        .map(|header| (header.name, trim_ows(header.value)))
        .collect();
    assert_eq!(request.headers().collect::<Vec<_>>(), expected);

    let offered: Vec<&str> = request.offered_protocols().collect();
    assert!(offered.iter().all(|token| is_token(token)));
    // Selected: offered, supported, and no offered protocol is preferred over it.
    let rank = |token: &str| cfg.subprotocols.iter().position(|p| p == token);
    let best_offered = offered.iter().filter_map(|token| rank(token)).min();
    assert_eq!(request.selected_protocol().and_then(rank), best_offered);
    if let Some(selected) = request.selected_protocol() {
        assert!(offered.contains(&selected));
    }
    for extension in request.extensions() {
        assert!(is_token(extension.name));
        for (name, value) in extension.params() {
            assert!(is_token(name));
            assert!(value.is_none_or(|value| is_token(&value)));
        }
    }

    let accept = request.accept_key();
    assert!(accept.iter().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b)));
    let mut out = Vec::new();
    request.write_response(&mut out);
    assert!(out.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(out.ends_with(b"\r\n\r\n"));
    assert!(
        !out.windows(24)
            .any(|w| w.eq_ignore_ascii_case(b"sec-websocket-extensions"))
    );
}

/// The answer when `window` already proves that the request line is longer than `max`
/// bytes: 414, unless the bytes that prove it hold a syntax error, which a shorter
/// prefix would have reported first.
fn request_line_too_long(window: &[u8], max: usize) -> Option<HandshakeError> {
    let proof_len = request_line_overflow(window, max)?;
    let mut request = httparse::Request::new(&mut []);
    Some(match request.parse(&window[..proof_len]) {
        Err(error) => HandshakeError::from_httparse(error),
        Ok(_) => HandshakeError::RequestLineTooLong,
    })
}

/// Returns `Some(n)` when `window` already proves that the request line is longer than
/// `max` bytes (line ending excluded); `window[..n]` are the bytes that prove it.
fn request_line_overflow(window: &[u8], max: usize) -> Option<usize> {
    // httparse skips empty lines before the request line; so must we, or a few CRLFs
    // in front would hide a long line from this check.
    let start = skip_empty_lines(window);
    // A line of `max` bytes and its CRLF fit in `max + 2` bytes; that many bytes
    // without a newline prove the line is longer.
    let probe_end = window.len().min(start.saturating_add(max).saturating_add(2));
    let probe = &window[start..probe_end];
    match probe.iter().position(|&b| b == b'\n') {
        Some(newline) => {
            let line_len = if newline > 0 && probe[newline - 1] == b'\r' {
                newline - 1
            } else {
                newline
            };
            (line_len > max).then_some(start + newline + 1)
        }
        None => (probe.len() == max.saturating_add(2)).then_some(probe_end),
    }
}

/// Index of the first byte after the empty lines (CRLF or LF) that may precede the
/// request line, the way httparse skips them.
fn skip_empty_lines(bytes: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match bytes.get(at..) {
            Some([b'\r', b'\n', ..]) => at += 2,
            Some([b'\n', ..]) => at += 1,
            _ => return at,
        }
    }
}

/// Steps 1 to 13 of the module docs, on a request httparse found complete.
fn validate<'b>(
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

/// `Sec-WebSocket-Protocol` over all its lines: `1#token` (RFC 6455 section 4.3).
#[derive(Default)]
struct ProtocolScan<'b> {
    lines: usize,
    tokens: usize,
    malformed: bool,
    /// The offered token we prefer most so far, with its rank in the config.
    best: Option<(usize, &'b [u8])>,
}

impl<'b> ProtocolScan<'b> {
    fn scan(&mut self, value: &'b [u8], supported: &[String]) {
        self.lines += 1;
        for element in value.split(|&b| b == b',') {
            let token = trim_ows(element);
            // RFC 9110 section 5.6.1.2: empty elements are accepted and not counted.
            if token.is_empty() {
                continue;
            }
            if !token.iter().all(|&b| is_tchar(b)) {
                self.malformed = true;
                return;
            }
            self.tokens += 1;
            let rank = supported.iter().position(|name| name.as_bytes() == token);
            if let Some(rank) = rank
                && self.best.is_none_or(|(best, _)| rank < best)
            {
                self.best = Some((rank, token));
            }
        }
    }

    /// Malformed, or present with no token at all (`1#` needs one).
    fn is_malformed(&self) -> bool {
        self.malformed || (self.lines > 0 && self.tokens == 0)
    }
}

/// `Sec-WebSocket-Extensions` over all its lines: `1#extension`.
#[derive(Default)]
struct ExtensionScan {
    lines: usize,
    extensions: usize,
    malformed: bool,
}

impl ExtensionScan {
    fn scan(&mut self, value: &[u8]) {
        self.lines += 1;
        let Ok(value) = std::str::from_utf8(value) else {
            self.malformed = true;
            return;
        };
        for extension in ExtensionList::new(value) {
            if extension.is_err() {
                self.malformed = true;
                return;
            }
            self.extensions += 1;
        }
    }

    fn is_malformed(&self) -> bool {
        self.malformed || (self.lines > 0 && self.extensions == 0)
    }
}

/// The extension list did not follow RFC 6455 section 9.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Malformed;

/// The extensions of one `Sec-WebSocket-Extensions` line. Yields `Err` once, at the
/// first malformed element, then stops.
struct ExtensionList<'b> {
    cursor: Cursor<'b>,
    done: bool,
}

impl<'b> ExtensionList<'b> {
    fn new(value: &'b str) -> Self {
        Self {
            cursor: Cursor::new(value),
            done: false,
        }
    }

    /// `extension-token *( ";" extension-param )`, and the `,` after it if any.
    fn extension(&mut self) -> Result<Extension<'b>, Malformed> {
        let name = self.cursor.token().ok_or(Malformed)?;
        let params_start = self.cursor.pos;
        let mut params_end = params_start;
        loop {
            self.cursor.skip_ows();
            match self.cursor.peek() {
                None => break,
                Some(b',') => {
                    self.cursor.pos += 1;
                    break;
                }
                Some(b';') => {
                    self.cursor.pos += 1;
                    param(&mut self.cursor).ok_or(Malformed)?;
                    params_end = self.cursor.pos;
                }
                Some(_) => return Err(Malformed),
            }
        }
        Ok(Extension {
            name,
            params: self.cursor.text.get(params_start..params_end).unwrap_or(""),
        })
    }
}

impl<'b> Iterator for ExtensionList<'b> {
    type Item = Result<Extension<'b>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        // RFC 9110 section 5.6.1.2: skip empty list elements.
        loop {
            self.cursor.skip_ows();
            if !self.cursor.eat(b',') {
                break;
            }
        }
        if self.cursor.peek().is_none() {
            self.done = true;
            return None;
        }
        let extension = self.extension();
        self.done = extension.is_err();
        Some(extension)
    }
}

/// An extension parameter value as written: a token, or the inside of a quoted string.
#[derive(Clone, Copy, Debug)]
struct ParamValue<'b> {
    text: &'b str,
    /// The quoted string held `\` escapes, so the text must be unescaped.
    escaped: bool,
}

impl<'b> ParamValue<'b> {
    fn unescape(self) -> Cow<'b, str> {
        if self.escaped {
            // Validation allowed only `\` followed by a tchar, so dropping every `\`
            // is the whole unescaping.
            Cow::Owned(self.text.chars().filter(|&c| c != '\\').collect())
        } else {
            Cow::Borrowed(self.text)
        }
    }
}

/// `extension-param = token [ "=" (token | quoted-string) ]`, the `;` already eaten.
/// Whitespace is allowed around `=` (RFC 6455 uses RFC 2616's implied `*LWS`).
fn param<'b>(cursor: &mut Cursor<'b>) -> Option<(&'b str, Option<ParamValue<'b>>)> {
    cursor.skip_ows();
    let name = cursor.token()?;
    let mut ahead = cursor.clone();
    ahead.skip_ows();
    if !ahead.eat(b'=') {
        return Some((name, None));
    }
    ahead.skip_ows();
    let value = if ahead.peek() == Some(b'"') {
        ahead.quoted_token()?
    } else {
        ParamValue {
            text: ahead.token()?,
            escaped: false,
        }
    };
    *cursor = ahead;
    Some((name, Some(value)))
}

/// A position in a header value. It only ever steps over ASCII bytes, so every
/// position it slices at is a char boundary.
#[derive(Clone, Debug)]
struct Cursor<'b> {
    text: &'b str,
    pos: usize,
}

impl<'b> Cursor<'b> {
    fn new(text: &'b str) -> Self {
        Self { text, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let matched = self.peek() == Some(byte);
        self.pos += usize::from(matched);
        matched
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// `1*tchar`.
    fn token(&mut self) -> Option<&'b str> {
        let start = self.pos;
        let rest = self.text.as_bytes().get(start..)?;
        let len = rest.iter().position(|&b| !is_tchar(b)).unwrap_or(rest.len());
        self.pos += len;
        self.text.get(start..self.pos).filter(|token| !token.is_empty())
    }

    /// A quoted string whose content, unescaped, is a token (RFC 6455 section 9.1:
    /// "the value after quoted-string unescaping MUST conform to the 'token' ABNF").
    fn quoted_token(&mut self) -> Option<ParamValue<'b>> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.pos;
        let mut escaped = false;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                    if !self.peek().is_some_and(is_tchar) {
                        return None;
                    }
                    self.pos += 1;
                }
                byte if is_tchar(byte) => self.pos += 1,
                _ => return None,
            }
        }
        let text = self.text.get(start..self.pos)?;
        self.pos += 1; // the closing quote
        (!text.is_empty()).then_some(ParamValue { text, escaped })
    }
}

/// The header lines of a head that httparse accepted: walked again on demand so that a
/// [`Request`] stores no per-header data. Relies on what httparse guarantees for a
/// request: lines end in CRLF or LF, a name is a token directly followed by `:`, values
/// hold no CR or LF, and there is no line folding.
#[derive(Clone, Debug)]
struct HeaderLines<'b> {
    rest: &'b [u8],
}

impl<'b> HeaderLines<'b> {
    fn new(head: &'b [u8]) -> Self {
        let request_line = &head[skip_empty_lines(head)..];
        let rest = match request_line.iter().position(|&b| b == b'\n') {
            Some(newline) => &request_line[newline + 1..],
            None => &[],
        };
        Self { rest }
    }
}

impl<'b> Iterator for HeaderLines<'b> {
    type Item = (&'b str, &'b [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (line, rest) = match self.rest.iter().position(|&b| b == b'\n') {
            Some(newline) => (&self.rest[..newline], &self.rest[newline + 1..]),
            None => (self.rest, &[][..]),
        };
        self.rest = rest;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let parsed = line
            .iter()
            .position(|&b| b == b':')
            .filter(|&colon| colon > 0)
            .and_then(|colon| {
                let name = std::str::from_utf8(&line[..colon]).ok()?;
                Some((name, trim_ows(&line[colon + 1..])))
            });
        if parsed.is_none() {
            // The blank line that ends the head.
            self.rest = &[];
        }
        parsed
    }
}

/// Decodes `application/x-www-form-urlencoded` bytes one at a time.
struct FormDecoded<'a> {
    bytes: &'a [u8],
}

impl<'a> FormDecoded<'a> {
    fn new(text: &'a str) -> Self {
        Self { bytes: text.as_bytes() }
    }
}

impl Iterator for FormDecoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        let (byte, rest) = match (first, rest) {
            (b'+', _) => (b' ', rest),
            (b'%', [high, low, tail @ ..]) => match (hex_value(*high), hex_value(*low)) {
                (Some(high), Some(low)) => (high << 4 | low, tail),
                _ => (b'%', rest),
            },
            _ => (first, rest),
        };
        self.bytes = rest;
        Some(byte)
    }
}

fn form_decode(value: &str) -> Cow<'_, str> {
    if !value.contains(['%', '+']) {
        return Cow::Borrowed(value);
    }
    let bytes: Vec<u8> = FormDecoded::new(value).collect();
    match String::from_utf8(bytes) {
        Ok(decoded) => Cow::Owned(decoded),
        Err(error) => Cow::Owned(String::from_utf8_lossy(error.as_bytes()).into_owned()),
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
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

/// `uri-host [ ":" port ]` at the byte level: reg-name, IPv4 and IP-literal bytes
/// (RFC 3986 section 3.2.2). Refuses what no host holds: whitespace, `/`, `@`, `?`, ...
fn is_valid_host(host: &str) -> bool {
    !host.is_empty() && host.bytes().all(|b| HOST_BYTES[usize::from(b)])
}

/// RFC 9110 section 5.6.2.
fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

const ALPHANUMERIC: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// `tchar`: the bytes of a token (RFC 9110 section 5.6.2).
static TCHAR: [bool; 256] = byte_set(ALPHANUMERIC, b"!#$%&'*+-.^_`|~");
/// Unreserved, pct-encoded, sub-delims, `:` and the brackets of an IP literal.
static HOST_BYTES: [bool; 256] = byte_set(ALPHANUMERIC, b"-._~%!$&'()*+,;=:[]");

const fn byte_set(first: &[u8], second: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut i = 0;
    while i < first.len() {
        set[first[i] as usize] = true;
        i += 1;
    }
    let mut i = 0;
    while i < second.len() {
        set[second[i] as usize] = true;
        i += 1;
    }
    set
}

fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(is_tchar)
}

/// `field-value` bytes: HTAB, SP, VCHAR, obs-text; no CR, LF or other control byte.
fn is_field_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
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

/// Strips optional whitespace (SP, HTAB) from both ends (RFC 9110 section 5.6.3).
fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|&b| b != b' ' && b != b'\t');
    let Some(start) = start else {
        return &[];
    };
    let end = value
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |end| end + 1);
    &value[start..end]
}

fn trim_ows_str(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
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
    use proptest::prelude::*;

    /// The key of RFC 6455 section 1.3 and the accept value it must produce.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    /// What Chrome sends for `new WebSocket(url, ["chat.v1", "chat.v2"])`.
    const CHROME: &[u8] = SAMPLE_CHROME_REQUEST;

    fn minimal_headers() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Host", "server.example.com"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13"),
        ]
    }

    fn build(request_line: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut out = format!("{request_line}\r\n");
        for (name, value) in headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    fn minimal() -> Vec<u8> {
        build("GET /ws HTTP/1.1", &minimal_headers())
    }

    /// The minimal request with the request line replaced.
    fn with_line(request_line: &str) -> Vec<u8> {
        build(request_line, &minimal_headers())
    }

    /// The minimal request plus extra header lines.
    fn with(extra: &[(&str, &str)]) -> Vec<u8> {
        let mut headers: Vec<(&str, &str)> = minimal_headers();
        headers.extend_from_slice(extra);
        build("GET /ws HTTP/1.1", &headers)
    }

    /// The minimal request without the header `name`.
    fn without(name: &str) -> Vec<u8> {
        let mut headers = minimal_headers();
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        build("GET /ws HTTP/1.1", &headers)
    }

    /// The minimal request with the value of header `name` replaced.
    fn replacing(name: &str, value: &str) -> Vec<u8> {
        let headers: Vec<(&str, &str)> = minimal_headers()
            .into_iter()
            .map(|(n, v)| {
                if n.eq_ignore_ascii_case(name) {
                    (n, value)
                } else {
                    (n, v)
                }
            })
            .collect();
        build("GET /ws HTTP/1.1", &headers)
    }

    fn test_cfg() -> HandshakeConfig {
        HandshakeConfig {
            paths: vec!["/ws".into(), "/chat".into()],
            allowed_origins: Vec::new(),
            subprotocols: vec!["chat.v2".into(), "chat.v1".into()],
        }
    }

    fn small_limits() -> Limits {
        Limits {
            max_header_bytes: 256,
            max_headers: 8,
            max_request_line_bytes: 64,
            ..Limits::default()
        }
    }

    fn parse(buf: &[u8]) -> Result<Option<Request<'_>>, HandshakeError> {
        parse_request(buf, &Limits::default(), &test_cfg())
    }

    fn parse_with<'b>(buf: &'b [u8], cfg: &HandshakeConfig) -> Result<Option<Request<'b>>, HandshakeError> {
        parse_request(buf, &Limits::default(), cfg)
    }

    #[track_caller]
    fn accepted(buf: &[u8]) -> Request<'_> {
        match parse(buf) {
            Ok(Some(request)) => request,
            other => panic!("expected a valid request, got {other:?}"),
        }
    }

    #[track_caller]
    fn rejected(buf: &[u8]) -> HandshakeError {
        match parse(buf) {
            Err(error) => error,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn response_of(error: HandshakeError) -> String {
        let mut out = Vec::new();
        error.write_response(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn upgrade_response(request: &Request<'_>) -> String {
        let mut out = Vec::new();
        request.write_response(&mut out);
        String::from_utf8(out).unwrap()
    }

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

    // ---- item 8 and section 4.2.2: subprotocols ----

    #[test]
    fn selects_subprotocol_by_server_preference() {
        // The client lists chat.v1 first; the server prefers chat.v2.
        let buf = with(&[("Sec-WebSocket-Protocol", "chat.v1, chat.v2")]);
        assert_eq!(accepted(&buf).selected_protocol(), Some("chat.v2"));
        let buf = with(&[("Sec-WebSocket-Protocol", "mqtt, chat.v1")]);
        assert_eq!(accepted(&buf).selected_protocol(), Some("chat.v1"));
    }

    #[test]
    fn selected_protocol_is_none_when_nothing_matches() {
        let buf = with(&[("Sec-WebSocket-Protocol", "mqtt, stomp")]);
        let request = accepted(&buf);
        assert_eq!(request.selected_protocol(), None);
        assert_eq!(request.offered_protocols().collect::<Vec<_>>(), ["mqtt", "stomp"]);
        let buf = with(&[("Sec-WebSocket-Protocol", "chat.v1")]);
        let request = parse_with(&buf, &HandshakeConfig::default()).unwrap().unwrap();
        assert_eq!(request.selected_protocol(), None);
    }

    #[test]
    fn offered_protocols_span_repeated_headers() {
        let buf = with(&[
            ("Sec-WebSocket-Protocol", "mqtt"),
            ("sec-websocket-protocol", "stomp,chat.v1"),
        ]);
        let request = accepted(&buf);
        assert_eq!(
            request.offered_protocols().collect::<Vec<_>>(),
            ["mqtt", "stomp", "chat.v1"]
        );
        assert_eq!(request.selected_protocol(), Some("chat.v1"));
    }

    #[test]
    fn subprotocol_match_is_case_sensitive() {
        let buf = with(&[("Sec-WebSocket-Protocol", "CHAT.V2")]);
        assert_eq!(accepted(&buf).selected_protocol(), None);
    }

    #[test]
    fn empty_protocol_header_is_400() {
        for value in ["", ",", " , ,"] {
            let buf = with(&[("Sec-WebSocket-Protocol", value)]);
            assert_eq!(rejected(&buf), HandshakeError::MalformedProtocols, "{value:?}");
        }
    }

    #[test]
    fn malformed_protocol_token_is_400() {
        for value in ["chat v2", "chat;v2", "\"chat\"", "chat/2", "chat=1", "ch\u{e9}t"] {
            let buf = with(&[("Sec-WebSocket-Protocol", value)]);
            assert_eq!(rejected(&buf), HandshakeError::MalformedProtocols, "{value:?}");
        }
    }

    #[test]
    fn empty_protocol_list_elements_are_ignored() {
        let buf = with(&[("Sec-WebSocket-Protocol", ", mqtt,, chat.v1 ,")]);
        let request = accepted(&buf);
        assert_eq!(request.offered_protocols().collect::<Vec<_>>(), ["mqtt", "chat.v1"]);
        assert_eq!(request.selected_protocol(), Some("chat.v1"));
    }

    // ---- item 9 and section 9.1: extensions ----

    #[test]
    fn extensions_are_parsed_with_params() {
        let buf = with(&[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits; server_max_window_bits=10, x-foo",
        )]);
        let request = accepted(&buf);
        let extensions: Vec<Extension<'_>> = request.extensions().collect();
        assert_eq!(extensions.len(), 2);
        assert_eq!(extensions[0].name, "permessage-deflate");
        let params: Vec<_> = extensions[0].params().collect();
        assert_eq!(
            params,
            [
                ("client_max_window_bits", None),
                ("server_max_window_bits", Some(Cow::Borrowed("10"))),
            ]
        );
        assert_eq!(extensions[1].name, "x-foo");
        assert_eq!(extensions[1].params().count(), 0);
    }

    #[test]
    fn quoted_extension_values_are_unquoted() {
        let buf = with(&[("Sec-WebSocket-Extensions", r#"x; a="10"; b = "1\0" ; c"#)]);
        let request = accepted(&buf);
        let extension = request.extensions().next().unwrap();
        let params: Vec<_> = extension.params().collect();
        assert_eq!(params.len(), 3);
        assert!(matches!(params[0], ("a", Some(Cow::Borrowed("10")))));
        assert!(matches!(&params[1], ("b", Some(Cow::Owned(value))) if value == "10"));
        assert_eq!(params[2], ("c", None));
    }

    #[test]
    fn extensions_span_repeated_headers() {
        let buf = with(&[
            ("Sec-WebSocket-Extensions", "a"),
            ("Sec-WebSocket-Extensions", "b;x, c"),
        ]);
        let names: Vec<&str> = accepted(&buf).extensions().map(|e| e.name).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn well_formed_extension_variants_are_accepted() {
        for value in [
            "a",
            "a;b",
            "a ; b = c",
            "a;b=\"c\"",
            "a, , b",
            ", a",
            "a;\tb=1\t,\tc",
            "a;b=\"\\c\"",
        ] {
            let buf = with(&[("Sec-WebSocket-Extensions", value)]);
            assert!(parse(&buf).unwrap().is_some(), "{value:?}");
        }
    }

    #[test]
    fn malformed_extensions_get_400() {
        for value in [
            "",
            ",",
            ";",
            "a;",
            "a;=1",
            "a;b=",
            "a b",
            "a;b=c d",
            "a;b=\"\"",
            "a;b=\"c d\"",
            "a;b=\"c",
            "a;b=\"c\\",
            "a;b=\"c\\ \"",
            "a;b=c=d",
            "a;b=\"c\"d",
            "=a",
            "a;b=\"c,d\"",
            "\u{e9}",
        ] {
            let buf = with(&[("Sec-WebSocket-Extensions", value)]);
            assert_eq!(rejected(&buf), HandshakeError::MalformedExtensions, "{value:?}");
        }
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
    fn unknown_headers_are_ignored() {
        let buf = with(&[("Cookie", "a=b; c=d"), ("X-Anything", ""), ("Sec-WebSocket-Foo", "bar")]);
        let request = accepted(&buf);
        let cookie = request.headers().find(|(name, _)| name.eq_ignore_ascii_case("cookie"));
        assert_eq!(cookie, Some(("Cookie", &b"a=b; c=d"[..])));
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

    #[test]
    fn bare_lf_line_endings_are_accepted() {
        let buf = String::from_utf8(minimal()).unwrap().replace("\r\n", "\n");
        let request = accepted(buf.as_bytes());
        assert_eq!(request.header_len(), buf.len());
        assert_eq!(request.headers().count(), 5);
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let buf = [&b"\r\n\n"[..], &minimal()].concat();
        let request = accepted(&buf);
        assert_eq!(request.header_len(), buf.len());
        assert_eq!(request.headers().count(), 5);
    }

    #[test]
    fn malformed_header_line_is_400() {
        for bad in [
            &b"Bad Name: x\r\n"[..],
            b"NoColon\r\n",
            b" folded: x\r\n",
            b"X: a\rb\r\n",
            b"X: \x01\r\n",
        ] {
            let buf = [&b"GET /ws HTTP/1.1\r\n"[..], bad, b"\r\n"].concat();
            assert_eq!(
                rejected(&buf),
                HandshakeError::MalformedRequest,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    // ---- Query parameters ----

    #[test]
    fn query_param_percent_decodes_and_treats_plus_as_space() {
        let buf = with_line("GET /ws?token=a%2Bb%20c+d&name=J%C3%BCrgen HTTP/1.1");
        let request = accepted(&buf);
        assert_eq!(request.query_param("token").as_deref(), Some("a+b c d"));
        assert_eq!(request.query_param("name").as_deref(), Some("J\u{fc}rgen"));
    }

    #[test]
    fn query_param_returns_first_match_and_none_when_absent() {
        let buf = with_line("GET /ws?a=1&a=2&flag&&b= HTTP/1.1");
        let request = accepted(&buf);
        assert_eq!(request.query_param("a").as_deref(), Some("1"));
        assert_eq!(request.query_param("flag").as_deref(), Some(""));
        assert_eq!(request.query_param("b").as_deref(), Some(""));
        assert_eq!(request.query_param("c"), None);
        assert_eq!(accepted(&minimal()).query_param("a"), None);
    }

    #[test]
    fn query_param_borrows_when_nothing_to_decode() {
        let buf = with_line("GET /ws?token=abc.def-ghi HTTP/1.1");
        assert!(matches!(
            accepted(&buf).query_param("token"),
            Some(Cow::Borrowed("abc.def-ghi"))
        ));
    }

    #[test]
    fn query_param_keeps_invalid_escapes_and_replaces_invalid_utf8() {
        let buf = with_line("GET /ws?a=100%&b=%zz%4&c=%FF HTTP/1.1");
        let request = accepted(&buf);
        assert_eq!(request.query_param("a").as_deref(), Some("100%"));
        assert_eq!(request.query_param("b").as_deref(), Some("%zz%4"));
        assert_eq!(request.query_param("c").as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn query_param_names_are_decoded() {
        let buf = with_line("GET /ws?my+key=1&x%5Fy=2 HTTP/1.1");
        let request = accepted(&buf);
        assert_eq!(request.query_param("my key").as_deref(), Some("1"));
        assert_eq!(request.query_param("x_y").as_deref(), Some("2"));
    }

    // ---- Limits ----

    fn line_of_len(len: usize) -> String {
        let fixed = "GET /ws? HTTP/1.1".len();
        format!("GET /ws?{} HTTP/1.1", "q".repeat(len - fixed))
    }

    #[test]
    fn request_line_at_limit_is_accepted() {
        let limits = small_limits();
        let buf = build(&line_of_len(limits.max_request_line_bytes), &minimal_headers()[..2]);
        // Only Host and Upgrade: the point is that the line passes the limit check.
        assert_eq!(
            parse_request(&buf, &limits, &test_cfg()),
            Err(HandshakeError::MissingConnectionUpgrade)
        );
    }

    #[test]
    fn request_line_over_limit_gets_414() {
        let limits = small_limits();
        let buf = build(&line_of_len(limits.max_request_line_bytes + 1), &minimal_headers()[..2]);
        let error = parse_request(&buf, &limits, &test_cfg()).unwrap_err();
        assert_eq!(error, HandshakeError::RequestLineTooLong);
        assert!(response_of(error).starts_with("HTTP/1.1 414 URI Too Long\r\nConnection: close\r\n"));
        // With the default limits too.
        let buf = build(&line_of_len(MAX_LINE_DEFAULT + 1), &minimal_headers());
        assert_eq!(rejected(&buf), HandshakeError::RequestLineTooLong);
        let buf = build(&line_of_len(MAX_LINE_DEFAULT), &minimal_headers());
        let cfg_query = accepted(&buf);
        assert_eq!(cfg_query.path(), "/ws");
    }

    const MAX_LINE_DEFAULT: usize = limits::MAX_REQUEST_LINE_BYTES;

    #[test]
    fn long_request_line_is_refused_before_it_ends() {
        let limits = small_limits();
        let max = limits.max_request_line_bytes;
        let buf = format!("GET /{}", "a".repeat(1000));
        let buf = buf.as_bytes();
        // max + 1 bytes could still be max bytes and a CR; max + 2 cannot.
        assert_eq!(parse_request(&buf[..max + 1], &limits, &test_cfg()), Ok(None));
        assert_eq!(
            parse_request(&buf[..max + 2], &limits, &test_cfg()),
            Err(HandshakeError::RequestLineTooLong)
        );
    }

    #[test]
    fn syntax_error_inside_a_long_request_line_wins_over_414() {
        let limits = small_limits();
        let buf = format!("GET /a\"b{} HTTP/1.1\r\n\r\n", "a".repeat(100));
        // '"' is a URI byte for httparse; use a control byte instead.
        let buf = buf.replace('"', "\x01");
        assert_eq!(
            parse_request(buf.as_bytes(), &limits, &test_cfg()),
            Err(HandshakeError::MalformedRequest)
        );
    }

    #[test]
    fn leading_empty_lines_do_not_hide_a_long_request_line() {
        let limits = small_limits();
        let buf = [&b"\r\n\r\n\n"[..], &build(&line_of_len(65), &minimal_headers()[..1])].concat();
        assert_eq!(
            parse_request(&buf, &limits, &test_cfg()),
            Err(HandshakeError::RequestLineTooLong)
        );
    }

    #[test]
    fn header_section_over_limit_gets_431() {
        let limits = small_limits();
        let buf = with(&[("Cookie", &"c".repeat(200))]);
        let error = parse_request(&buf, &limits, &test_cfg()).unwrap_err();
        assert_eq!(error, HandshakeError::HeadersTooLarge);
        assert!(response_of(error).starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    }

    #[test]
    fn unterminated_header_section_is_refused_at_the_limit() {
        // A slowloris: valid lines, never the blank line.
        let limits = small_limits();
        let mut buf = b"GET /ws HTTP/1.1\r\n".to_vec();
        while buf.len() < 1000 {
            buf.extend_from_slice(b"X-Slow: 1234567890123456789012345678901234567890\r\n");
        }
        let limit = limits.max_header_bytes;
        assert_eq!(parse_request(&buf[..limit - 1], &limits, &test_cfg()), Ok(None));
        assert_eq!(
            parse_request(&buf[..limit], &limits, &test_cfg()),
            Err(HandshakeError::HeadersTooLarge)
        );
        assert_eq!(
            parse_request(&buf, &limits, &test_cfg()),
            Err(HandshakeError::HeadersTooLarge)
        );
    }

    #[test]
    fn header_section_exactly_at_limit_is_accepted() {
        let base = minimal().len();
        let padding = "X-Pad: ".len() + 2;
        let limits = Limits {
            max_header_bytes: base + padding + 10,
            ..Limits::default()
        };
        let buf = with(&[("X-Pad", "0123456789")]);
        assert_eq!(buf.len(), limits.max_header_bytes);
        assert!(parse_request(&buf, &limits, &test_cfg()).unwrap().is_some());
        let buf = with(&[("X-Pad", "01234567890")]);
        assert_eq!(
            parse_request(&buf, &limits, &test_cfg()),
            Err(HandshakeError::HeadersTooLarge)
        );
    }

    #[test]
    fn too_many_headers_gets_431() {
        let limits = Limits {
            max_headers: 6,
            ..Limits::default()
        };
        assert!(
            parse_request(&with(&[("X-A", "1")]), &limits, &test_cfg())
                .unwrap()
                .is_some()
        );
        let buf = with(&[("X-A", "1"), ("X-B", "2")]);
        let error = parse_request(&buf, &limits, &test_cfg()).unwrap_err();
        assert_eq!(error, HandshakeError::TooManyHeaders);
        assert_eq!(error.status(), Status::HeaderFieldsTooLarge);
        // Decided as soon as the extra header line is complete, before the blank line.
        let end = buf.len() - 2;
        assert_eq!(
            parse_request(&buf[..end], &limits, &test_cfg()),
            Err(HandshakeError::TooManyHeaders)
        );
    }

    #[test]
    fn header_slots_are_capped() {
        let limits = Limits {
            max_headers: 10_000,
            max_header_bytes: 64 * 1024,
            ..Limits::default()
        };
        let names: Vec<String> = (0..HEADER_SLOTS_MAX).map(|i| format!("X-{i}")).collect();
        let extra: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
        let buf = with(&extra);
        assert_eq!(
            parse_request(&buf, &limits, &test_cfg()),
            Err(HandshakeError::TooManyHeaders)
        );
    }

    #[test]
    fn partial_request_needs_more() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"GET /ws HTTP/1.1\r\nHost: h\r\n"), Ok(None));
        assert_eq!(parse(b"\r\n"), Ok(None));
    }

    #[test]
    fn header_len_excludes_pipelined_frame_bytes() {
        let frame = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let buf = [&minimal()[..], &frame].concat();
        let request = accepted(&buf);
        assert_eq!(request.header_len(), minimal().len());
        assert_eq!(&buf[request.header_len()..], &frame);
        assert_eq!(parse(&buf[..request.header_len()]), Ok(Some(request)));
    }

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
    fn appends_to_the_callers_buffer() {
        let mut out = b"previous".to_vec();
        HandshakeError::MissingKey.write_response(&mut out);
        assert!(out.starts_with(b"previousHTTP/1.1 400"));
        let mut out = b"previous".to_vec();
        accepted(&minimal()).write_response(&mut out);
        assert!(out.starts_with(b"previousHTTP/1.1 101"));
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

    // ---- Split input ----

    /// Requests fed in pieces: (name, bytes, limits).
    fn split_samples() -> Vec<(&'static str, Vec<u8>, Limits)> {
        let small = small_limits();
        let default = Limits::default();
        let mut frames_after = CHROME.to_vec();
        frames_after.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4, 0x88, 0x80]);
        let mut slowloris = b"GET /ws HTTP/1.1\r\n".to_vec();
        while slowloris.len() < 400 {
            slowloris.extend_from_slice(b"X-Slow: 01234567890123456789012345678901234567890123456789\r\n");
        }
        vec![
            ("chrome", CHROME.to_vec(), default.clone()),
            ("chrome_then_frames", frames_after, default.clone()),
            ("minimal", minimal(), default.clone()),
            (
                "bare_lf",
                String::from_utf8(minimal()).unwrap().replace("\r\n", "\n").into_bytes(),
                default.clone(),
            ),
            ("leading_crlf", [&b"\r\n"[..], &minimal()].concat(), default.clone()),
            ("post", with_line("POST /ws HTTP/1.1"), default.clone()),
            ("http_1_0", with_line("GET /ws HTTP/1.0"), default.clone()),
            ("missing_key", without("Sec-WebSocket-Key"), default.clone()),
            ("version_8", replacing("Sec-WebSocket-Version", "8"), default.clone()),
            (
                "bad_extensions",
                with(&[("Sec-WebSocket-Extensions", "a;")]),
                default.clone(),
            ),
            (
                "bad_header_name",
                [&b"GET /ws HTTP/1.1\r\nBad Name: x\r\n"[..], &minimal()[18..]].concat(),
                default.clone(),
            ),
            (
                "long_line",
                build(&format!("GET /{} HTTP/1.1", "a".repeat(100)), &minimal_headers()),
                small.clone(),
            ),
            (
                "long_line_bad_byte",
                build(&format!("GET /{}\x01 HTTP/1.1", "a".repeat(100)), &minimal_headers()),
                small.clone(),
            ),
            (
                "bad_byte_then_long",
                build(&format!("GET /a\x01{} HTTP/1.1", "a".repeat(100)), &minimal_headers()),
                small.clone(),
            ),
            (
                "too_many_headers",
                with(&[("A", "1"), ("B", "2"), ("C", "3"), ("D", "4")]),
                small.clone(),
            ),
            (
                "headers_too_large",
                with(&[("Cookie", &"c".repeat(300))]),
                small.clone(),
            ),
            ("slowloris", slowloris, small),
        ]
    }

    #[test]
    fn every_prefix_needs_more_or_gives_the_final_answer() {
        let cfg = test_cfg();
        for (name, buf, limits) in split_samples() {
            let full = parse_request(&buf, &limits, &cfg);
            assert_ne!(full, Ok(None), "{name}: the whole sample must decide");
            let decided_at = (0..=buf.len())
                .find(|&cut| parse_request(&buf[..cut], &limits, &cfg) != Ok(None))
                .unwrap();
            for cut in 0..=buf.len() {
                let early = parse_request(&buf[..cut], &limits, &cfg);
                if cut < decided_at {
                    assert_eq!(early, Ok(None), "{name}: cut {cut}");
                } else {
                    assert_eq!(early, full, "{name}: cut {cut}");
                }
            }
            if let Ok(Some(request)) = full {
                assert_eq!(decided_at, request.header_len(), "{name}");
            }
        }
    }

    #[test]
    fn split_samples_decide_where_expected() {
        let cfg = test_cfg();
        let expected = [
            ("post", Err(HandshakeError::MethodNotGet)),
            ("http_1_0", Err(HandshakeError::Http10)),
            ("missing_key", Err(HandshakeError::MissingKey)),
            ("version_8", Err(HandshakeError::UnsupportedVersion)),
            ("bad_extensions", Err(HandshakeError::MalformedExtensions)),
            ("bad_header_name", Err(HandshakeError::MalformedRequest)),
            ("long_line", Err(HandshakeError::RequestLineTooLong)),
            ("long_line_bad_byte", Err(HandshakeError::RequestLineTooLong)),
            ("bad_byte_then_long", Err(HandshakeError::MalformedRequest)),
            ("too_many_headers", Err(HandshakeError::TooManyHeaders)),
            ("headers_too_large", Err(HandshakeError::HeadersTooLarge)),
            ("slowloris", Err(HandshakeError::HeadersTooLarge)),
        ];
        let samples = split_samples();
        for (name, result) in expected {
            let (_, buf, limits) = samples.iter().find(|(n, _, _)| *n == name).unwrap();
            assert_eq!(parse_request(buf, limits, &cfg).map(|r| r.is_some()), result, "{name}");
        }
        for name in ["chrome", "chrome_then_frames", "minimal", "bare_lf", "leading_crlf"] {
            let (_, buf, limits) = samples.iter().find(|(n, _, _)| *n == name).unwrap();
            assert!(parse_request(buf, limits, &cfg).unwrap().is_some(), "{name}");
        }
    }

    #[test]
    fn fuzz_entry_point_accepts_samples() {
        for (_, buf, _) in split_samples() {
            fuzz_parse(&buf);
        }
        fuzz_parse(b"");
        fuzz_parse(&[0xff; 9000]);
    }

    // ---- Properties ----

    /// Byte snippets that mutations splice in, chosen to reach the grammar's corners.
    const SNIPPETS: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"\r\n\r\n",
        b",",
        b";",
        b"=",
        b"\"",
        b"\\",
        b" ",
        b"\t",
        b"%",
        b"\x80",
        b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"\r\nHost: h",
        b"\r\nSec-WebSocket-Protocol: chat.v1, x",
        b"\r\nSec-WebSocket-Extensions: x; y=\"z\", w",
        b"\r\nOrigin: https://chat.example.com",
        b"\r\nContent-Length: 0",
        b"\r\nSec-WebSocket-Version: 13",
    ];

    fn mutate(mut bytes: Vec<u8>, ops: &[(u8, prop::sample::Index, u8)]) -> Vec<u8> {
        for (op, index, byte) in ops {
            let at = if bytes.is_empty() { 0 } else { index.index(bytes.len()) };
            match op % 5 {
                0 if !bytes.is_empty() => bytes[at] = *byte,
                1 => bytes.insert(at, *byte),
                2 if !bytes.is_empty() => {
                    bytes.remove(at);
                }
                3 => {
                    let snippet = SNIPPETS[usize::from(*byte) % SNIPPETS.len()];
                    bytes.splice(at..at, snippet.iter().copied());
                }
                4 => bytes.truncate(at.max(bytes.len() / 2)),
                _ => {}
            }
        }
        bytes
    }

    fn base_requests() -> Vec<Vec<u8>> {
        vec![
            CHROME.to_vec(),
            minimal(),
            with(&[
                ("Sec-WebSocket-Protocol", "chat.v1, chat.v2"),
                ("Origin", "https://chat.example.com"),
            ]),
            with(&[(
                "Sec-WebSocket-Extensions",
                "permessage-deflate; client_max_window_bits=\"15\", x",
            )]),
        ]
    }

    fn property_cfgs() -> [HandshakeConfig; 2] {
        [
            HandshakeConfig::default(),
            HandshakeConfig {
                allowed_origins: vec!["https://chat.example.com".into()],
                ..test_cfg()
            },
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn arbitrary_bytes_hold_invariants(data in prop::collection::vec(any::<u8>(), 0..1024)) {
            fuzz_parse(&data);
            let _ = check_parse_invariants(&data, &small_limits(), &test_cfg());
        }

        #[test]
        fn arbitrary_headers_after_a_request_line_hold_invariants(
            tail in prop::collection::vec(prop::sample::select(b"aZ09-:;,= \t\r\n\"\\%/\x80".to_vec()), 0..512),
        ) {
            let data = [&b"GET /ws HTTP/1.1\r\n"[..], &tail].concat();
            fuzz_parse(&data);
        }

        #[test]
        fn mutated_requests_hold_invariants(
            base in 0usize..4,
            ops in prop::collection::vec((any::<u8>(), any::<prop::sample::Index>(), any::<u8>()), 0..6),
        ) {
            let data = mutate(base_requests().swap_remove(base), &ops);
            for cfg in property_cfgs() {
                let _ = check_parse_invariants(&data, &Limits::default(), &cfg);
                let _ = check_parse_invariants(&data, &small_limits(), &cfg);
            }
        }

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

        #[test]
        fn random_chunking_matches_unsplit(
            sample in 0usize..17,
            chunks in prop::collection::vec(1usize..48, 1..64),
        ) {
            let cfg = test_cfg();
            let (name, buf, limits) = split_samples().swap_remove(sample);
            let unsplit = parse_request(&buf, &limits, &cfg);
            // What a connection does: append each read, parse again, stop at an answer.
            let mut received = Vec::new();
            let mut chunks = chunks.iter().cycle();
            while received.len() < buf.len() {
                let take = (*chunks.next().unwrap()).min(buf.len() - received.len());
                received.extend_from_slice(&buf[received.len()..received.len() + take]);
                if parse_request(&received, &limits, &cfg) != Ok(None) {
                    break;
                }
            }
            // Requests compare by content, so this holds across the two buffers.
            prop_assert_eq!(parse_request(&received, &limits, &cfg), unsplit, "{}", name);
        }
    }
}
