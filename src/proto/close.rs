//! Close codes (RFC 6455 section 7.4), close frame payloads, and the protocol errors
//! that end a connection, each mapped to the close code that goes on the wire.
#![forbid(unsafe_code)]

use crate::limits::MAX_CONTROL_PAYLOAD;

/// A close status code as carried in a close frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the server is going away (drain without restart; heartbeat timeout).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// 1005: reported locally when a close frame carried no code; never sent.
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: reported locally when the connection ended without a close frame; never
    /// sent.
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: a text message (or close reason) that is not UTF-8.
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: a message that violates the server's policy (e.g. inbound rate).
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// 1009: a frame or message over the configured size limit.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    /// 1010: sent by clients when the server did not negotiate a required extension.
    pub const MANDATORY_EXTENSION: Self = Self(1010);
    /// 1011: the server hit an unexpected condition (or the client is too slow to read
    /// what it is sent: see the slow-consumer policy).
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// 1012: the server is restarting; reconnect.
    pub const SERVICE_RESTART: Self = Self(1012);
    /// 1013: try again later (overload).
    pub const TRY_AGAIN_LATER: Self = Self(1013);
    /// 1014: an upstream server failed.
    pub const BAD_GATEWAY: Self = Self(1014);

    /// Whether this code may appear in a close frame on the wire (RFC 6455 section 7.4
    /// and the IANA registry): 1000-1003, 1007-1014, and 3000-4999 for libraries and
    /// applications. 1004 is reserved; 1005, 1006 and 1015 are for local reporting only.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A protocol violation by the peer. Each one fails the connection with the close code
/// of [`ProtocolError::close_code`]; [`ProtocolError::label`] names it in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtocolError {
    /// RSV1-3 set without a negotiated extension (section 5.2), or RSV1 on a control or
    /// continuation frame with permessage-deflate (RFC 7692 section 6.1).
    ReservedBits,
    /// Opcode 3-7 or 0xB-0xF (section 5.2).
    ReservedOpcode,
    /// A client frame without the mask bit (section 5.1: the server MUST close).
    UnmaskedFrame,
    /// A server frame with the mask bit (section 5.1: the client MUST close).
    MaskedFrame,
    /// The most significant bit of a 64-bit length set (section 5.2).
    InvalidLength,
    /// A control frame with FIN clear (section 5.5).
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload (section 5.5).
    ControlTooLong,
    /// A continuation frame with no fragmented message in progress (section 5.4).
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// A frame whose declared length exceeds `Limits::max_frame_bytes`.
    FrameTooBig,
    /// A message whose fragments add up to more than `Limits::max_message_bytes`.
    MessageTooBig,
    /// A text message that is not UTF-8 (section 8.1).
    InvalidUtf8,
    /// A close frame with a 1-byte payload (section 5.5.1).
    InvalidClosePayload,
    /// A close frame whose code may not be sent on the wire (section 7.4).
    InvalidCloseCode,
    /// A close frame whose reason is not UTF-8 (section 5.5.1).
    InvalidCloseReason,
    /// A compressed message (permessage-deflate, RFC 7692) that is not valid DEFLATE.
    BadDeflate,
}

impl ProtocolError {
    /// Every variant, to register metric labels and to test them all.
    pub const ALL: [Self; 16] = [
        Self::ReservedBits,
        Self::ReservedOpcode,
        Self::UnmaskedFrame,
        Self::MaskedFrame,
        Self::InvalidLength,
        Self::FragmentedControl,
        Self::ControlTooLong,
        Self::UnexpectedContinuation,
        Self::ExpectedContinuation,
        Self::FrameTooBig,
        Self::MessageTooBig,
        Self::InvalidUtf8,
        Self::InvalidClosePayload,
        Self::InvalidCloseCode,
        Self::InvalidCloseReason,
        Self::BadDeflate,
    ];

    /// The close code we send when failing the connection for this error.
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::FrameTooBig | Self::MessageTooBig => CloseCode::MESSAGE_TOO_BIG,
            Self::InvalidUtf8 | Self::InvalidCloseReason | Self::BadDeflate => CloseCode::INVALID_PAYLOAD,
            Self::ReservedBits
            | Self::ReservedOpcode
            | Self::UnmaskedFrame
            | Self::MaskedFrame
            | Self::InvalidLength
            | Self::FragmentedControl
            | Self::ControlTooLong
            | Self::UnexpectedContinuation
            | Self::ExpectedContinuation
            | Self::InvalidClosePayload
            | Self::InvalidCloseCode => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// A short reason sent in the close frame and shown in logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ReservedBits => "reserved bits set",
            Self::ReservedOpcode => "reserved opcode",
            Self::UnmaskedFrame => "client frame not masked",
            Self::MaskedFrame => "server frame masked",
            Self::InvalidLength => "invalid payload length",
            Self::FragmentedControl => "fragmented control frame",
            Self::ControlTooLong => "control frame too long",
            Self::UnexpectedContinuation => "continuation without a message",
            Self::ExpectedContinuation => "expected a continuation frame",
            Self::FrameTooBig => "frame too big",
            Self::MessageTooBig => "message too big",
            Self::InvalidUtf8 => "invalid UTF-8 in text message",
            Self::InvalidClosePayload => "close payload of one byte",
            Self::InvalidCloseCode => "invalid close code",
            Self::InvalidCloseReason => "close reason not UTF-8",
            Self::BadDeflate => "compressed message is not DEFLATE",
        }
    }

    /// A stable snake_case name for metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::ReservedBits => "reserved_bits",
            Self::ReservedOpcode => "reserved_opcode",
            Self::UnmaskedFrame => "unmasked_frame",
            Self::MaskedFrame => "masked_frame",
            Self::InvalidLength => "invalid_length",
            Self::FragmentedControl => "fragmented_control",
            Self::ControlTooLong => "control_too_long",
            Self::UnexpectedContinuation => "unexpected_continuation",
            Self::ExpectedContinuation => "expected_continuation",
            Self::FrameTooBig => "frame_too_big",
            Self::MessageTooBig => "message_too_big",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::InvalidClosePayload => "invalid_close_payload",
            Self::InvalidCloseCode => "invalid_close_code",
            Self::InvalidCloseReason => "invalid_close_reason",
            Self::BadDeflate => "bad_deflate",
        }
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (close {})", self.reason(), self.close_code())
    }
}

impl std::error::Error for ProtocolError {}

/// Parses an unmasked close frame payload: `Ok(None)` for an empty payload (no status
/// code), else the code and the reason.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::InvalidClosePayload),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::InvalidCloseCode);
            }
            let reason = super::utf8::validate(reason).map_err(|_| ProtocolError::InvalidCloseReason)?;
            Ok(Some((code, reason)))
        }
    }
}

/// The longest close reason that fits a control frame next to the 2-byte code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// Cuts `reason` to at most [`MAX_CLOSE_REASON`] bytes on a character boundary, so the
/// close frame stays a valid control frame and its reason stays valid UTF-8.
pub fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= MAX_CLOSE_REASON {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_codes_follow_rfc_6455_section_7_4() {
        for code in 0..=u16::MAX {
            let valid = CloseCode(code).is_valid_on_wire();
            let expected = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(valid, expected, "code {code}");
        }
        for reserved in [1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535, 0, 999] {
            assert!(!CloseCode(reserved).is_valid_on_wire(), "{reserved}");
        }
    }

    #[test]
    fn empty_close_payload_has_no_code() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
    }

    #[test]
    fn one_byte_close_payload_is_a_protocol_error() {
        let err = parse_close_payload(&[3]).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn invalid_close_code_is_a_protocol_error() {
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            let err = parse_close_payload(&code.to_be_bytes()).unwrap_err();
            assert_eq!(err, ProtocolError::InvalidCloseCode, "{code}");
            assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn close_reason_must_be_utf8() {
        let err =
            parse_close_payload(&[0x03, 0xe8, 0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xed, 0xa0, 0x80]).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn valid_close_payload_parses() {
        let mut payload = 4000u16.to_be_bytes().to_vec();
        payload.extend_from_slice("bye κόσμε".as_bytes());
        assert_eq!(parse_close_payload(&payload), Ok(Some((CloseCode(4000), "bye κόσμε"))));
    }

    #[test]
    fn truncated_reason_fits_and_stays_utf8() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= MAX_CLOSE_REASON);
        assert!(cut.len() >= MAX_CLOSE_REASON - 1);
        assert_eq!(truncate_reason("short"), "short");
    }

    #[test]
    fn every_error_has_a_distinct_label() {
        let all = ProtocolError::ALL;
        let labels: std::collections::HashSet<_> = all.iter().map(|e| e.label()).collect();
        assert_eq!(labels.len(), all.len());
        for e in all {
            assert!(e.close_code().is_valid_on_wire());
            assert!(e.reason().len() <= MAX_CLOSE_REASON);
        }
    }
}
