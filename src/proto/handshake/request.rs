//! [`parse_request`]: the bytes read so far, to a borrowed [`Request`], "read more" or a
//! [`HandshakeError`].
//!
//! - In: everything read so far (possibly followed by the client's first frames), the
//!   shard's [`Limits`] and the listener's [`HandshakeConfig`].
//! - Out: `Ok(None)` while the head is incomplete and within the limits; the limit and
//!   syntax errors (414, 431, 400) as soon as the bytes that prove them arrive, decided
//!   on `buf[..max_header_bytes]` only; on a complete head, what `validate.rs` decides.
//!
//! [`Request`] is the view of a valid head. Its accessors return what validation found,
//! or walk the stored head again (`HeaderLines`), so it keeps no per-header storage.
//! [`fuzz_parse`] and the invariants it asserts live here too: `scripts/fuzz.sh` calls it
//! and the property tests below run it.

use std::borrow::Cow;
use std::mem::MaybeUninit;

use super::error::HandshakeError;
use super::lists::{Extension, ExtensionList};
use super::query;
use super::syntax::{is_token, trim_ows, trim_ows_str};
use super::validate::validate;
use super::{HEADER_SLOTS_MAX, HandshakeConfig, Status};
use crate::limits::Limits;

/// A validated upgrade request, borrowing the caller's buffer.
///
/// Everything in it has been checked; the methods only read. It holds the header bytes
/// (`buf[..header_len]`) so that the views spanning several header lines can walk them
/// again instead of being stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'b> {
    /// The request line and headers, up to and including the blank line.
    pub(super) head: &'b [u8],
    /// The path of the target, without the query.
    pub(super) path: &'b str,
    /// The raw query, after `?`.
    pub(super) query: Option<&'b str>,
    /// The authority the client asked for: the `Host` header, or the authority of an
    /// absolute-form target (RFC 9112 section 3.2.2).
    pub(super) host: &'b str,
    /// `Sec-WebSocket-Key`, trimmed and validated; hashed into the accept value.
    pub(super) key: &'b [u8],
    /// The subprotocol chosen at parse time, so the 101 needs no second pass.
    pub(super) selected_protocol: Option<&'b str>,
    /// Raw `Origin`, for the application's logs; already checked against the config.
    pub(super) origin: Option<&'b str>,
    /// Raw `Authorization`, for the auth layer.
    pub(super) authorization: Option<&'b str>,
    /// Raw `User-Agent` (last line), for logs.
    pub(super) user_agent: Option<&'b str>,
    /// Raw `X-Forwarded-For` (last line), for the client address behind a proxy.
    pub(super) forwarded_for: Option<&'b str>,
    /// Raw `X-Real-IP` (last line).
    pub(super) x_real_ip: Option<&'b str>,
    /// Raw `Forwarded` (RFC 7239, last line).
    pub(super) forwarded: Option<&'b str>,
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
        query::find_param(self.query?, name)
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

/// Runs the parser on `data` with the default limits and config and panics if one of
/// its invariants does not hold. For fuzzers (cargo-fuzz calls this) and the property
/// tests; not part of the API.
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
pub(super) fn skip_empty_lines(bytes: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match bytes.get(at..) {
            Some([b'\r', b'\n', ..]) => at += 2,
            Some([b'\n', ..]) => at += 1,
            _ => return at,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::handshake::testutil::*;
    use proptest::prelude::*;

    // ---- Header lines ----

    #[test]
    fn unknown_headers_are_ignored() {
        let buf = with(&[("Cookie", "a=b; c=d"), ("X-Anything", ""), ("Sec-WebSocket-Foo", "bar")]);
        let request = accepted(&buf);
        let cookie = request.headers().find(|(name, _)| name.eq_ignore_ascii_case("cookie"));
        assert_eq!(cookie, Some(("Cookie", &b"a=b; c=d"[..])));
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
