//! RFC 6455 section 5 frames: header decoding, header encoding, and frames encoded once
//! and shared by many connections.
//!
//! Decoding is a pure function of a byte slice: [`decode_header`] returns `Ok(None)`
//! when the slice holds only part of a header, and checks the declared payload length
//! against the frame limit before the caller buffers a byte of payload. Payload bytes
//! are the caller's to handle (see `connection.rs`): the decoder never copies them.
//!
//! Encoding writes the header into a small stack buffer ([`HeaderBuf`]), so a payload
//! can be written with vectored I/O without being copied next to its header, and
//! [`SharedFrame`] holds a whole server frame in one reference-counted allocation, so a
//! message fanned out to many connections is framed once.
#![forbid(unsafe_code)]

use std::sync::Arc;

use super::close::ProtocolError;
use crate::limits::MAX_CONTROL_PAYLOAD;

/// Frame opcodes defined by RFC 6455; the others are reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: a further fragment of a text or binary message.
    Continuation = 0x0,
    /// 0x1: the first frame of a UTF-8 text message.
    Text = 0x1,
    /// 0x2: the first frame of a binary message.
    Binary = 0x2,
    /// 0x8: close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl OpCode {
    /// Decodes the low four bits of the first header byte.
    pub fn from_u8(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong: at most 125 bytes and never fragmented.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Which end of the connection we are: it decides which direction is masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// We are the server: input frames must be masked, output frames are not.
    Server,
    /// We are a client (the load generator, tests): input must be unmasked, output is
    /// masked.
    Client,
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Whether this is the final fragment of its message.
    pub fin: bool,
    /// What the frame carries.
    pub opcode: OpCode,
    /// The masking key, present on every client frame.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes, already checked against the frame limit.
    pub payload_len: u64,
    /// RSV1 on the first frame of a message: the message is compressed
    /// (permessage-deflate; only when [`decode_header_ext`] was told it was negotiated).
    pub compressed: bool,
}

/// The longest header: 2 bytes, a 64-bit length and a masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// How many header bytes the first two bytes announce, or `None` with fewer than two.
pub fn header_len(buf: &[u8]) -> Option<usize> {
    let second = *buf.get(1)?;
    let len_bytes = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask_bytes = if second & 0x80 != 0 { 4 } else { 0 };
    Some(2 + len_bytes + mask_bytes)
}

/// Decodes the frame header at the start of `buf`, for an endpoint playing `role`.
///
/// Returns `Ok(None)` when `buf` holds only part of the header, `Ok(Some((header,
/// header_len)))` when it is whole, and an error for any header that breaks RFC 6455
/// section 5 or declares a payload longer than `max_frame_bytes` (a control frame is
/// held to 125 bytes whatever the limit). Continuation rules need message state and are
/// checked by the connection.
pub fn decode_header(
    buf: &[u8],
    role: Role,
    max_frame_bytes: u64,
) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    decode_header_ext(buf, role, max_frame_bytes, false)
}

/// [`decode_header`] on a connection that negotiated permessage-deflate (`deflate`):
/// RSV1 is then allowed on a text or binary frame (it marks a compressed message) and
/// still an error on a control or continuation frame (RFC 7692 section 6.1); RSV2 and
/// RSV3 are always errors.
pub fn decode_header_ext(
    buf: &[u8],
    role: Role,
    max_frame_bytes: u64,
    deflate: bool,
) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    let Some(len) = header_len(buf) else {
        return Ok(None);
    };
    let first = buf[0];
    let second = buf[1];
    // The first two bytes decide most errors; report them without waiting for the rest
    // of the header, so a peer cannot stall the verdict by withholding bytes.
    let opcode = OpCode::from_u8(first & 0x0f);
    let compressed = first & 0x40 != 0;
    let rsv1_ok = deflate && matches!(opcode, Some(OpCode::Text | OpCode::Binary));
    if first & 0x30 != 0 || (compressed && !rsv1_ok) {
        return Err(ProtocolError::ReservedBits);
    }
    let fin = first & 0x80 != 0;
    let opcode = opcode.ok_or(ProtocolError::ReservedOpcode)?;
    let masked = second & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
        (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
        _ => {}
    }
    let short_len = second & 0x7f;
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolError::FragmentedControl);
        }
        if usize::from(short_len) > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolError::ControlTooLong);
        }
    }
    if buf.len() < len {
        return Ok(None);
    }
    let (payload_len, mask_at) = match short_len {
        126 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(bytes);
            if n >> 63 != 0 {
                return Err(ProtocolError::InvalidLength);
            }
            (n, 10)
        }
        n => (u64::from(n), 2),
    };
    // Lengths not in their shortest form (a 16-bit field holding 5) are accepted: the
    // RFC puts that MUST on the sender, and refusing them protects nothing, since the
    // length is checked against the limit either way.
    if payload_len > max_frame_bytes {
        return Err(ProtocolError::FrameTooBig);
    }
    let mask = masked.then(|| [buf[mask_at], buf[mask_at + 1], buf[mask_at + 2], buf[mask_at + 3]]);
    debug_assert_eq!(mask_at + if masked { 4 } else { 0 }, len);
    Ok(Some((
        FrameHeader {
            fin,
            opcode,
            mask,
            payload_len,
            compressed,
        },
        len,
    )))
}

/// An encoded frame header on the stack: up to 14 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderBuf {
    bytes: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl HeaderBuf {
    /// The header bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Encodes a frame header. The payload goes after it unchanged for an unmasked (server)
/// frame, or XORed with `mask` for a client frame.
pub fn encode_header(fin: bool, opcode: OpCode, payload_len: u64, mask: Option<[u8; 4]>) -> HeaderBuf {
    assert!(payload_len >> 63 == 0, "payload length over 2^63");
    debug_assert!(!opcode.is_control() || (fin && payload_len <= MAX_CONTROL_PAYLOAD as u64));
    let mut bytes = [0u8; MAX_HEADER_LEN];
    bytes[0] = (u8::from(fin) << 7) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut len = match payload_len {
        0..=125 => {
            bytes[1] = mask_bit | payload_len as u8;
            2
        }
        126..=0xffff => {
            bytes[1] = mask_bit | 126;
            bytes[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        }
        _ => {
            bytes[1] = mask_bit | 127;
            bytes[2..10].copy_from_slice(&payload_len.to_be_bytes());
            10
        }
    };
    if let Some(key) = mask {
        bytes[len..len + 4].copy_from_slice(&key);
        len += 4;
    }
    HeaderBuf { bytes, len: len as u8 }
}

/// Appends a whole frame to `out`: header, then the payload (masked when `mask` is
/// given). For small frames and for clients; servers fanning out use [`SharedFrame`].
pub fn encode_frame(out: &mut Vec<u8>, fin: bool, opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) {
    let header = encode_header(fin, opcode, payload.len() as u64, mask);
    out.reserve(header.as_bytes().len() + payload.len());
    out.extend_from_slice(header.as_bytes());
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        super::mask::apply_mask(&mut out[start..], key, 0);
    }
}

/// A complete unmasked (server-to-client) frame, encoded once and shared: cloning it
/// costs a reference count, so one message queued on 100,000 connections is one
/// allocation. `Arc` rather than `Rc` so a frame can also be handed across shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedFrame {
    bytes: Arc<[u8]>,
}

impl SharedFrame {
    /// Frames `payload` as one unfragmented message or control frame.
    pub fn new(opcode: OpCode, payload: &[u8]) -> Self {
        let header = encode_header(true, opcode, payload.len() as u64, None);
        let mut bytes = Vec::with_capacity(header.as_bytes().len() + payload.len());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(payload);
        Self { bytes: bytes.into() }
    }

    /// Wraps bytes that already are one complete frame (a control frame from
    /// `Connection::poll_transmit`), so it can share the send queue with data frames.
    pub fn from_wire(frame: &[u8]) -> Self {
        debug_assert_eq!(header_len(frame).map(|n| n <= frame.len()), Some(true));
        Self { bytes: frame.into() }
    }

    /// A compressed data message (permessage-deflate): `payload` is the DEFLATE output
    /// and the frame carries RSV1.
    pub fn compressed(opcode: OpCode, payload: &[u8]) -> Self {
        debug_assert!(matches!(opcode, OpCode::Text | OpCode::Binary));
        let mut frame = Self::new(opcode, payload);
        Arc::get_mut(&mut frame.bytes).expect("not shared yet")[0] |= 0x40;
        frame
    }

    /// The opcode of a data frame (text or binary, not compressed), or `None` for a
    /// control frame, a compressed one or raw bytes: what may be compressed for a
    /// connection that negotiated it.
    pub fn plain_data_opcode(&self) -> Option<OpCode> {
        match self.bytes[0] {
            0x81 => Some(OpCode::Text),
            0x82 => Some(OpCode::Binary),
            _ => None,
        }
    }

    /// The payload (the bytes after the header).
    pub fn payload(&self) -> &[u8] {
        let head = header_len(&self.bytes).expect("a whole frame");
        &self.bytes[head..]
    }

    /// Whether two handles share one frame (so a frame fanned out to many connections is
    /// compressed once).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.bytes, &other.bytes)
    }

    /// A text message.
    pub fn text(text: &str) -> Self {
        Self::new(OpCode::Text, text.as_bytes())
    }

    /// A binary message.
    pub fn binary(payload: &[u8]) -> Self {
        Self::new(OpCode::Binary, payload)
    }

    /// The frame as it goes on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes on the wire (what a send queue counts).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true: a frame has at least a 2-byte header. Here for the `len` convention.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Fuzz entry point, shared by the property tests and the real fuzzer
/// (`scripts/fuzz.sh`). The first byte picks the role and a frame limit; the rest is a
/// header candidate. Asserts the decoder's invariants:
/// - a decoded header used exactly `header_len` bytes, respects the limit and the
///   control-frame rules, and survives an encode/decode round trip;
/// - every strict prefix of a decodable header is "need more" (errors are decided by
///   bytes the prefix already has, so a prefix cannot fail where the whole succeeds);
/// - an error on the whole input is either "need more" or the same error on each of its
///   prefixes of two bytes or more.
#[doc(hidden)]
pub fn fuzz_decode_header(data: &[u8]) {
    let Some((&selector, buf)) = data.split_first() else {
        return;
    };
    let role = if selector & 1 == 0 { Role::Server } else { Role::Client };
    let limit = [0u64, 125, 126, 65535, 65536, 1 << 20, u64::MAX >> 1][usize::from(selector >> 1) % 7];
    match decode_header(buf, role, limit) {
        Ok(Some((header, used))) => {
            assert_eq!(Some(used), header_len(buf));
            assert!(used <= buf.len() && used <= MAX_HEADER_LEN);
            assert!(header.payload_len <= limit);
            assert_eq!(header.mask.is_some(), role == Role::Server);
            if header.opcode.is_control() {
                assert!(header.fin && header.payload_len <= MAX_CONTROL_PAYLOAD as u64);
            }
            let again = encode_header(header.fin, header.opcode, header.payload_len, header.mask);
            let (decoded, n) = decode_header(again.as_bytes(), role, limit).unwrap().unwrap();
            assert_eq!((decoded, n <= used), (header, true));
            for cut in 0..used {
                assert_eq!(decode_header(&buf[..cut], role, limit), Ok(None), "prefix {cut}");
            }
        }
        Ok(None) => assert!(header_len(buf).is_none_or(|n| buf.len() < n)),
        Err(error) => {
            for cut in 2..buf.len().min(MAX_HEADER_LEN) {
                let prefix = decode_header(&buf[..cut], role, limit);
                assert!(
                    prefix == Ok(None) || prefix == Err(error),
                    "prefix {cut}: {prefix:?} vs {error:?}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 1 << 20;

    fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        decode_header(buf, Role::Server, LIMIT)
    }

    #[test]
    fn decodes_seven_bit_length_with_mask() {
        let buf = [0x81, 0x85, 1, 2, 3, 4];
        let (h, n) = decode(&buf).unwrap().unwrap();
        assert_eq!(n, 6);
        assert_eq!(
            h,
            FrameHeader {
                fin: true,
                opcode: OpCode::Text,
                mask: Some([1, 2, 3, 4]),
                payload_len: 5,
                compressed: false,
            }
        );
    }

    #[test]
    fn decodes_sixteen_bit_length() {
        let buf = [0x82, 0xfe, 0x01, 0x00, 9, 9, 9, 9];
        let (h, n) = decode(&buf).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (256, 8));
    }

    #[test]
    fn decodes_sixty_four_bit_length() {
        let mut buf = vec![0x02, 0xff];
        buf.extend_from_slice(&65536u64.to_be_bytes());
        buf.extend_from_slice(&[0, 0, 0, 0]);
        let (h, n) = decode(&buf).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode, h.payload_len, n), (false, OpCode::Binary, 65536, 14));
    }

    #[test]
    fn partial_header_is_need_more_at_every_split() {
        let mut buf = vec![0x82, 0xff];
        buf.extend_from_slice(&1000u64.to_be_bytes());
        buf.extend_from_slice(&[1, 2, 3, 4]);
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(decode(&buf).unwrap().is_some());
    }

    #[test]
    fn server_rejects_unmasked_client_frame() {
        assert_eq!(decode(&[0x81, 0x00]), Err(ProtocolError::UnmaskedFrame));
    }

    #[test]
    fn client_rejects_masked_server_frame() {
        assert_eq!(
            decode_header(&[0x81, 0x80, 0, 0, 0, 0], Role::Client, LIMIT),
            Err(ProtocolError::MaskedFrame)
        );
        assert!(decode_header(&[0x81, 0x00], Role::Client, LIMIT).unwrap().is_some());
    }

    #[test]
    fn rejects_each_reserved_bit() {
        for bit in [0x40, 0x20, 0x10] {
            assert_eq!(
                decode(&[0x81 | bit, 0x80, 0, 0, 0, 0]),
                Err(ProtocolError::ReservedBits)
            );
        }
    }

    #[test]
    fn rejects_every_reserved_opcode() {
        for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            assert_eq!(
                decode(&[0x80 | op, 0x80, 0, 0, 0, 0]),
                Err(ProtocolError::ReservedOpcode),
                "{op:#x}"
            );
        }
    }

    #[test]
    fn rejects_fragmented_control_frames() {
        for op in [0x8u8, 0x9, 0xa] {
            assert_eq!(decode(&[op, 0x80, 0, 0, 0, 0]), Err(ProtocolError::FragmentedControl));
        }
    }

    #[test]
    fn control_payload_over_125_is_rejected_from_the_first_two_bytes() {
        assert_eq!(decode(&[0x89, 0x80 | 126]), Err(ProtocolError::ControlTooLong));
        assert_eq!(decode(&[0x89, 0x80 | 127]), Err(ProtocolError::ControlTooLong));
        assert!(decode(&[0x89, 0x80 | 125, 0, 0, 0, 0]).unwrap().is_some());
    }

    #[test]
    fn length_with_most_significant_bit_is_rejected() {
        let mut buf = vec![0x82, 0xff];
        buf.extend_from_slice(&(1u64 << 63).to_be_bytes());
        buf.extend_from_slice(&[0; 4]);
        assert_eq!(decode(&buf), Err(ProtocolError::InvalidLength));
    }

    #[test]
    fn declared_length_over_limit_is_rejected_before_any_payload() {
        let mut buf = vec![0x82, 0xff];
        buf.extend_from_slice(&(LIMIT + 1).to_be_bytes());
        buf.extend_from_slice(&[0; 4]);
        assert_eq!(decode(&buf), Err(ProtocolError::FrameTooBig));
        let mut at_limit = vec![0x82, 0xff];
        at_limit.extend_from_slice(&LIMIT.to_be_bytes());
        at_limit.extend_from_slice(&[0; 4]);
        assert!(decode(&at_limit).unwrap().is_some());
    }

    #[test]
    fn non_minimal_length_encoding_is_accepted() {
        let buf = [0x82, 0xfe, 0x00, 0x05, 0, 0, 0, 0];
        assert_eq!(decode(&buf).unwrap().unwrap().0.payload_len, 5);
    }

    #[test]
    fn encode_then_decode_round_trips_every_length_class() {
        for len in [0u64, 1, 125, 126, 127, 65535, 65536, 1 << 40] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let h = encode_header(true, OpCode::Binary, len, mask);
                let role = if mask.is_some() { Role::Server } else { Role::Client };
                let (d, n) = decode_header(h.as_bytes(), role, u64::MAX).unwrap().unwrap();
                assert_eq!(n, h.as_bytes().len());
                assert_eq!(
                    (d.payload_len, d.mask, d.fin, d.opcode),
                    (len, mask, true, OpCode::Binary)
                );
            }
        }
    }

    #[test]
    fn encoder_uses_minimal_length_form() {
        assert_eq!(encode_header(true, OpCode::Text, 125, None).as_bytes().len(), 2);
        assert_eq!(encode_header(true, OpCode::Text, 126, None).as_bytes().len(), 4);
        assert_eq!(encode_header(true, OpCode::Text, 65535, None).as_bytes().len(), 4);
        assert_eq!(encode_header(true, OpCode::Text, 65536, None).as_bytes().len(), 10);
    }

    #[test]
    fn server_frames_are_unmasked_and_shared() {
        let frame = SharedFrame::text("hello");
        assert_eq!(frame.as_bytes(), b"\x81\x05hello");
        let copy = frame.clone();
        assert!(std::ptr::eq(frame.as_bytes(), copy.as_bytes()));
    }

    #[test]
    fn masked_frame_payload_is_xored() {
        let mut out = Vec::new();
        encode_frame(&mut out, true, OpCode::Text, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d]));
        // RFC 6455 section 5.7: a single-frame masked text message.
        assert_eq!(out, [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 4096, ..Default::default() })]
        #[test]
        fn fuzz_header_bytes(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20)) {
            fuzz_decode_header(&data);
        }
    }
}
