//! Every limit of the protocol core, side by side.
//!
//! Each limit is a named default constant plus a field of [`Limits`], so an operator can
//! change it and a reviewer can read them all in one place. Each doc says why the limit
//! exists and what happens when it is hit; the table in the crate docs (`src/lib.rs`)
//! repeats them and must be kept in step with this file.
#![forbid(unsafe_code)]

use std::time::Duration;

/// Default for [`Limits::max_header_bytes`]: 8 KiB, the usual HTTP server default
/// (nginx, hyper). Browsers send 400-1200 bytes; cookies can add a few KiB.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Default for [`Limits::max_headers`]: browsers send about 15 headers.
pub const MAX_HEADERS: usize = 64;
/// Default for [`Limits::max_request_line_bytes`]: room for a long token in the query
/// string (browsers cannot set headers on a WebSocket, so tokens travel in the URL).
pub const MAX_REQUEST_LINE_BYTES: usize = 4 * 1024;
/// Default for [`Limits::max_frame_bytes`]: 1 MiB. Chat messages are small; a frame
/// larger than this is refused from its header, before a byte of it is buffered.
pub const MAX_FRAME_BYTES: u64 = 1024 * 1024;
/// Default for [`Limits::max_message_bytes`]: 1 MiB, summed over all fragments.
pub const MAX_MESSAGE_BYTES: u64 = 1024 * 1024;
/// Default for [`Limits::close_timeout`]: how long we wait for the peer's close frame
/// after sending ours before the caller drops the TCP connection.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`Limits::ping_interval`] (the heartbeat).
pub const PING_INTERVAL: Duration = Duration::from_secs(25);
/// Default for [`Limits::idle_timeout`]: two missed heartbeats plus slack.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// RFC 6455 section 5.5: control frames carry at most 125 bytes of payload. Not
/// configurable: it is part of the protocol.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The limits one connection is held to. One `Limits` is shared by all connections of
/// a shard and passed by reference into every call of the protocol core, so it costs an
/// idle connection nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of the HTTP upgrade request, request line and headers included.
    /// Beyond it the request is answered with 431 and the connection closed.
    pub max_header_bytes: usize,
    /// Number of request headers. Beyond it: 431.
    pub max_headers: usize,
    /// Length of the request line (`GET /path?query HTTP/1.1`). Beyond it: 414.
    pub max_request_line_bytes: usize,
    /// Payload length of one frame, checked against the length field of the frame
    /// header before anything is buffered. Beyond it: close 1009 (message too big).
    pub max_frame_bytes: u64,
    /// Payload length of one message, summed over its fragments and checked as each
    /// frame header arrives. Beyond it: close 1009.
    pub max_message_bytes: u64,
    /// After we send a close frame, how long we wait for the peer's; then the connection
    /// is reported closed (`Event::Closed` with `timed_out`) and the caller drops it.
    pub close_timeout: Duration,
    /// When nothing has been received for this long, the server sends a ping.
    pub ping_interval: Duration,
    /// When nothing at all has been received for this long, the connection is closed
    /// with 1001 ("heartbeat timeout"). Must be longer than `ping_interval`.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: MAX_HEADER_BYTES,
            max_headers: MAX_HEADERS,
            max_request_line_bytes: MAX_REQUEST_LINE_BYTES,
            max_frame_bytes: MAX_FRAME_BYTES,
            max_message_bytes: MAX_MESSAGE_BYTES,
            close_timeout: CLOSE_TIMEOUT,
            ping_interval: PING_INTERVAL,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// Why a set of limits was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidLimits(pub &'static str);

impl std::fmt::Display for InvalidLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid limits: {}", self.0)
    }
}

impl std::error::Error for InvalidLimits {}

impl Limits {
    /// Checks the relations between limits that the protocol core relies on.
    pub fn validate(&self) -> Result<(), InvalidLimits> {
        if self.max_headers == 0 {
            return Err(InvalidLimits("max_headers must be at least 1"));
        }
        if self.max_request_line_bytes < 16 {
            return Err(InvalidLimits("max_request_line_bytes must be at least 16"));
        }
        if self.max_header_bytes < self.max_request_line_bytes {
            return Err(InvalidLimits(
                "max_header_bytes must be at least max_request_line_bytes",
            ));
        }
        if self.max_frame_bytes == 0 || self.max_message_bytes == 0 {
            return Err(InvalidLimits("frame and message limits must be positive"));
        }
        if self.max_frame_bytes > self.max_message_bytes {
            return Err(InvalidLimits("max_frame_bytes must not exceed max_message_bytes"));
        }
        // A message is assembled in one Vec; keep it addressable on 32-bit targets too.
        if self.max_message_bytes > u64::from(u32::MAX) {
            return Err(InvalidLimits("max_message_bytes must be below 4 GiB"));
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(InvalidLimits("idle_timeout must be longer than ping_interval"));
        }
        if self.close_timeout.is_zero() {
            return Err(InvalidLimits("close_timeout must be positive"));
        }
        Ok(())
    }
}

const _: () = assert!(MAX_FRAME_BYTES <= MAX_MESSAGE_BYTES);
const _: () = assert!(MAX_REQUEST_LINE_BYTES <= MAX_HEADER_BYTES);
const _: () = assert!(IDLE_TIMEOUT.as_millis() > PING_INTERVAL.as_millis());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Limits::default().validate().unwrap();
    }

    #[test]
    fn frame_limit_above_message_limit_is_refused() {
        let limits = Limits {
            max_frame_bytes: 10,
            max_message_bytes: 5,
            ..Limits::default()
        };
        assert!(limits.validate().is_err());
    }

    #[test]
    fn idle_timeout_must_exceed_ping_interval() {
        let limits = Limits {
            idle_timeout: PING_INTERVAL,
            ..Limits::default()
        };
        assert!(limits.validate().is_err());
    }
}
