//! Request builders and parse helpers shared by the tests of every file here.

pub(super) use super::{HandshakeConfig, HandshakeError, Request, SAMPLE_CHROME_REQUEST, Status, parse_request};
pub(super) use crate::limits::{self, Limits};

/// The key of RFC 6455 section 1.3 and the accept value it must produce.
pub(super) const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub(super) const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// What Chrome sends for `new WebSocket(url, ["chat.v1", "chat.v2"])`.
pub(super) const CHROME: &[u8] = SAMPLE_CHROME_REQUEST;

pub(super) fn minimal_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Host", "server.example.com"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ]
}

pub(super) fn build(request_line: &str, headers: &[(&str, &str)]) -> Vec<u8> {
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

pub(super) fn minimal() -> Vec<u8> {
    build("GET /ws HTTP/1.1", &minimal_headers())
}

/// The minimal request with the request line replaced.
pub(super) fn with_line(request_line: &str) -> Vec<u8> {
    build(request_line, &minimal_headers())
}

/// The minimal request plus extra header lines.
pub(super) fn with(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut headers: Vec<(&str, &str)> = minimal_headers();
    headers.extend_from_slice(extra);
    build("GET /ws HTTP/1.1", &headers)
}

/// The minimal request without the header `name`.
pub(super) fn without(name: &str) -> Vec<u8> {
    let mut headers = minimal_headers();
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    build("GET /ws HTTP/1.1", &headers)
}

/// The minimal request with the value of header `name` replaced.
pub(super) fn replacing(name: &str, value: &str) -> Vec<u8> {
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

pub(super) fn test_cfg() -> HandshakeConfig {
    HandshakeConfig {
        paths: vec!["/ws".into(), "/chat".into()],
        allowed_origins: Vec::new(),
        subprotocols: vec!["chat.v2".into(), "chat.v1".into()],
    }
}

pub(super) fn small_limits() -> Limits {
    Limits {
        max_header_bytes: 256,
        max_headers: 8,
        max_request_line_bytes: 64,
        ..Limits::default()
    }
}

pub(super) fn parse(buf: &[u8]) -> Result<Option<Request<'_>>, HandshakeError> {
    parse_request(buf, &Limits::default(), &test_cfg())
}

pub(super) fn parse_with<'b>(buf: &'b [u8], cfg: &HandshakeConfig) -> Result<Option<Request<'b>>, HandshakeError> {
    parse_request(buf, &Limits::default(), cfg)
}

#[track_caller]
pub(super) fn accepted(buf: &[u8]) -> Request<'_> {
    match parse(buf) {
        Ok(Some(request)) => request,
        other => panic!("expected a valid request, got {other:?}"),
    }
}

#[track_caller]
pub(super) fn rejected(buf: &[u8]) -> HandshakeError {
    match parse(buf) {
        Err(error) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

pub(super) fn response_of(error: HandshakeError) -> String {
    let mut out = Vec::new();
    error.write_response(&mut out);
    String::from_utf8(out).unwrap()
}

pub(super) fn upgrade_response(request: &Request<'_>) -> String {
    let mut out = Vec::new();
    request.write_response(&mut out);
    String::from_utf8(out).unwrap()
}
