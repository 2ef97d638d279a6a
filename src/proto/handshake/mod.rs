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
//!
//! # Where each job lives
//!
//! | file | job |
//! |---|---|
//! | `request.rs` | [`parse_request`]: httparse on the bytes so far, the limits on partial input, the borrowed [`Request`] and its views; the fuzz entry point |
//! | `validate.rs` | steps 1 to 13 above on a complete request: the RFC 6455 section 4.2.1 rules, each failure a [`HandshakeError`] |
//! | `lists.rs` | the list grammars of `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` ([`Extension`]) |
//! | `query.rs` | the query string: [`percent_decode`] (strict, the crate's one percent decoder) and the form decoding of [`Request::query_param`] built on its escape scanner |
//! | `error.rs` | [`HandshakeError`]: status, metric label and body of every refusal |
//! | `response.rs` | the bytes we send: the 101 ([`accept_key`]), [`Status`], [`write_error_response`] |
//! | `syntax.rs` | RFC 9110 byte classes (token, field value, host bytes) and whitespace trimming |
#![forbid(unsafe_code)]

mod error;
mod lists;
mod query;
mod request;
mod response;
mod syntax;
#[cfg(test)]
mod testutil;
mod validate;

pub use error::HandshakeError;
pub use lists::{Extension, ExtensionList, ExtensionParams, Malformed};
pub use query::percent_decode;
pub use request::{Request, parse_request};
#[doc(hidden)]
pub use request::{SAMPLE_CHROME_REQUEST, fuzz_parse};
pub use response::{Status, accept_key, write_error_response};
pub use validate::request_path;

use crate::limits;
#[cfg(doc)] // for the doc links only
use crate::limits::Limits;

/// RFC 6455 section 1.3: appended to the client's key before hashing, so that only a
/// WebSocket server can produce the accept value.
pub const WEBSOCKET_GUID: &[u8; 36] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The one protocol version we speak (RFC 6455 section 4.1). Sent back in
/// `Sec-WebSocket-Version` when a client asks for another or for none.
pub const SUPPORTED_VERSION: &str = "13";

/// Length of `Sec-WebSocket-Accept`: base64 of a 20-byte SHA-1 digest.
pub const ACCEPT_KEY_LEN: usize = 28;

/// Header slots on the stack for one parse; [`Limits::max_headers`] above this is
/// treated as this. The slots are `MaybeUninit`, so their number costs stack (32 bytes
/// each, 4 KiB in all) but no time; a stack array rather than a `Vec` because the
/// parser runs again on every read of a partial request and must not allocate. Browsers
/// send about 15 headers, and `Limits` defaults to 64.
pub const HEADER_SLOTS_MAX: usize = 128;
const _: () = assert!(limits::MAX_HEADERS <= HEADER_SLOTS_MAX);

/// The path [`HandshakeConfig::default`] serves.
pub const DEFAULT_PATH: &str = "/ws";

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
