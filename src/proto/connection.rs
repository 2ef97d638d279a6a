//! The per-connection WebSocket state machine, after the upgrade (quinn-style, sans-IO).
//!
//! Data enters through `handle_*` and leaves through `poll_*`:
//! - [`Connection::handle_input`] takes bytes read from the socket (unmasking them in
//!   place) and returns how many it consumed and at most one [`Event`]; the caller calls
//!   it again with the rest until it returns no event.
//! - [`Connection::handle_timeout`] runs the heartbeat and the close-handshake timer at
//!   the instant [`Connection::poll_timeout`] asked for.
//! - [`Connection::poll_transmit`] hands out the control frames the core wants sent
//!   (pong, heartbeat ping, close). Data messages are framed by the caller (shared
//!   frames from [`super::frame::SharedFrame`], or [`Connection::write_message`]), as
//!   long as [`Connection::can_send`] says so.
//!
//! Memory: an idle connection is this struct and nothing else (no buffer, no timer
//! object). Input is read into a buffer the caller owns; a message that arrives whole in
//! one read is handed out as a slice of that buffer (zero-copy). Only a message split
//! across reads or frames, a partial control frame, a pending pong or a close in
//! progress allocate, in one boxed `Extra` that is freed as soon as it is empty again.
//!
//! # Why one long file
//!
//! It is one state machine: reading (frames, fragments, UTF-8, control frames), the
//! heartbeat, and the close handshake share the connection's state bits and its one
//! `Extra`, and each transition is checked against all of them. Parsing of frame headers,
//! masks, close payloads and UTF-8 live in their own files beside it.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Instant;

use super::close::{CloseCode, ProtocolError, parse_close_payload, truncate_reason};
use super::frame::{
    FrameHeader, MAX_HEADER_LEN, OpCode, Role, decode_header_ext, encode_frame, encode_header, header_len,
};
use super::mask::apply_mask;
use super::utf8::{self, Utf8Validator};
use crate::limits::{Limits, MAX_CONTROL_PAYLOAD};
use crate::stamp::Stamp;

/// A complete data message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message, validated as UTF-8.
    Text(Cow<'a, str>),
    /// A binary message.
    Binary(Cow<'a, [u8]>),
}

impl Message<'_> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(t) => t.as_bytes(),
            Self::Binary(b) => b,
        }
    }

    /// Whether the payload was handed out without a copy (it lies in the input buffer).
    pub fn is_borrowed(&self) -> bool {
        matches!(self, Self::Text(Cow::Borrowed(_)) | Self::Binary(Cow::Borrowed(_)))
    }
}

/// What [`Connection::handle_input`] found in the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A data message.
    Message(Message<'a>),
    /// The peer's close frame (`code` is `None` when it carried no status code). If we
    /// had not sent a close yet, the reply is queued (echoing the code) and the
    /// connection is closed once it has been polled; otherwise the handshake is done.
    Close {
        /// The status code the peer sent.
        code: Option<CloseCode>,
        /// The peer's reason (UTF-8, at most 123 bytes).
        reason: &'a str,
    },
    /// A compressed data message (permessage-deflate, negotiated with
    /// [`Connection::set_deflate`]): `payload` is its DEFLATE data, frames joined and
    /// unmasked. The caller inflates it (`super::deflate::Inflater`, which bounds the
    /// output and validates text) and, if that fails, reports the error with
    /// [`Connection::fail_message`].
    Compressed {
        /// A text message (the inflated bytes must be UTF-8) rather than binary.
        text: bool,
        /// The compressed bytes.
        payload: Cow<'a, [u8]>,
    },
    /// The peer broke the protocol. A close frame with `error.close_code()` is queued;
    /// the connection is closed once it has been polled, and later input is discarded.
    Error(ProtocolError),
}

/// What [`Connection::handle_timeout`] did when a deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// Nothing was received for `Limits::idle_timeout`: a close frame (1001, "heartbeat
    /// timeout") is queued and the connection is closed once it has been polled.
    Heartbeat,
    /// The peer did not complete the close handshake within `Limits::close_timeout`:
    /// the connection is now closed.
    Close,
}

/// The connection's place in its lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Data flows both ways.
    Open,
    /// We queued (or sent) a close frame and wait for the peer's; data that still
    /// arrives is parsed (to find the close) and discarded.
    CloseSent,
    /// Our last frame, a close, is queued; once it is polled the connection is closed.
    /// Entered when the peer closed first, when it broke the protocol and when it went
    /// silent. Input is discarded.
    Closing,
    /// Nothing more goes in or out; the caller drops the socket.
    Closed,
}

/// The data message being assembled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Assembling {
    /// Between messages.
    None,
    /// A text message whose frames are arriving.
    Text,
    /// A binary message whose frames are arriving.
    Binary,
    /// A compressed text message (RSV1 on its first frame): validated once inflated.
    CompressedText,
    /// A compressed binary message.
    CompressedBinary,
}

/// Where the input is relative to frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FramePos {
    /// Between frames: the next byte starts a header.
    Between,
    /// In the payload of a frame without FIN.
    Inner,
    /// In the payload of a frame with FIN.
    Last,
}

/// Most pongs owed at once (see `Extra::pongs`).
pub const MAX_QUEUED_PONGS: usize = 32;

/// State that only a busy or closing connection needs, boxed so an idle one does not
/// carry it.
#[derive(Debug, Default)]
struct Extra {
    /// A frame header split across reads, kept until it is whole (its length is
    /// `Connection::header_len`). Here rather than inline: a header rarely straddles
    /// two reads, and inline its 14 bytes were in every idle connection's slot.
    header: [u8; MAX_HEADER_LEN],
    /// Payload of a data message split across reads or frames (bounded by
    /// `Limits::max_message_bytes`, checked at each frame header).
    message: Vec<u8>,
    /// Payload of a control frame split across reads (at most 125 bytes).
    control: Vec<u8>,
    /// Pongs we owe beyond a single empty one, in the order of their pings: each
    /// payload (at most 125 bytes) after its length byte. At most [`MAX_QUEUED_PONGS`];
    /// past that the oldest is answered by a later one (RFC 6455 section 5.5.3 allows
    /// it; the caller polls after every input step, so a well-run caller never gets
    /// there).
    pongs: VecDeque<u8>,
    /// Pongs in `pongs`.
    pong_count: u8,
    /// The close frame we queued: code (`None` for an empty close) and reason.
    close: Option<(Option<CloseCode>, Cow<'static, str>)>,
    /// When a close in progress gives up on the peer.
    close_deadline: Option<Instant>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.message.capacity() == 0
            && self.control.capacity() == 0
            && self.pongs.capacity() == 0
            && self.close.is_none()
            && self.close_deadline.is_none()
    }
}

/// A control frame ready to go on the wire.
#[derive(Clone, Copy, Debug)]
pub struct ControlFrame {
    bytes: [u8; 6 + MAX_CONTROL_PAYLOAD],
    len: u8,
}

impl ControlFrame {
    fn new(opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Self {
        debug_assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        let header = encode_header(true, opcode, payload.len() as u64, mask);
        let head = header.as_bytes();
        let mut bytes = [0u8; 6 + MAX_CONTROL_PAYLOAD];
        bytes[..head.len()].copy_from_slice(head);
        let end = head.len() + payload.len();
        bytes[head.len()..end].copy_from_slice(payload);
        if let Some(key) = mask {
            apply_mask(&mut bytes[head.len()..end], key, 0);
        }
        Self { bytes, len: end as u8 }
    }

    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The frame's opcode.
    pub fn opcode(&self) -> OpCode {
        OpCode::from_u8(self.bytes[0] & 0x0f).expect("control frames carry valid opcodes")
    }
}

/// The connection refuses data: a close frame has been queued or the connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotOpen;

/// The state machine of one WebSocket connection.
#[derive(Debug)]
pub struct Connection {
    /// When input last arrived: any byte from the peer proves it alive ([`Stamp`]: 8
    /// bytes where an `Instant` takes 16, in every connection slot).
    last_input: Stamp,
    /// Buffers and close state of a busy or closing connection; `None` when idle.
    extra: Option<Box<Extra>>,
    /// Payload bytes of the current frame still to come (a frame is at most
    /// `Limits::max_frame_bytes`, which the configuration caps at 4 GiB - 1; a longer
    /// one is refused with 1009 before it gets here).
    frame_remaining: u32,
    /// The current frame's masking key (all zero for unmasked input).
    key: [u8; 4],
    /// UTF-8 state of the text message being assembled.
    utf8: Utf8Validator,
    /// Client role only: state of the generator for masking keys, never 0 (xorshift
    /// keeps a nonzero state nonzero). 0 in the server role, which is how the role is
    /// told ([`Connection::role`]): a field of its own would take the byte that keeps
    /// the connection at 48.
    mask_seed: u32,
    /// Bytes of a split frame header kept in `Extra::header` (0: none kept).
    header_len: u8,
    /// Payload offset of the current frame, modulo 4 (the masking phase).
    phase: u8,
    /// Opcode of the current frame; meaningful while in a frame.
    frame_opcode: OpCode,
    /// Whether a header has been read and its payload is still arriving, and its FIN.
    frame: FramePos,
    /// The data message being assembled.
    assembling: Assembling,
    /// Where the connection is in its lifetime.
    state: State,
    /// A heartbeat ping was sent and nothing has been received since.
    ping_outstanding: bool,
    /// A heartbeat ping is due to be polled.
    ping_queued: bool,
    /// A pong is due to be polled: an empty one, or the first of `Extra::pongs`.
    pong_queued: bool,
    /// Frame headers read since the caller last took the count (for metrics; it fits
    /// in what would otherwise be padding).
    frames_in: u16,
    /// Pings received since the caller last took the count (they count toward the
    /// caller's message rate: each is answered, so a flood must be bounded).
    pings_in: u8,
    /// permessage-deflate: 0 when not negotiated, else the LZ77 window (9 to 15 bits)
    /// our compressed messages may use. All the state compression needs per connection.
    deflate_bits: u8,
}

/// What one step of the input loop found; turned into an [`Event`] by
/// [`Connection::handle_input`], which alone ties lifetimes to the input.
enum Found {
    /// A whole message at `input[start..end]`, already unmasked (and validated if text
    /// and not compressed).
    Borrowed {
        text: bool,
        compressed: bool,
        start: usize,
        end: usize,
    },
    /// A message assembled in `Extra::message`, handed out by value.
    Owned {
        text: bool,
        compressed: bool,
        payload: Vec<u8>,
    },
    /// A close frame whose payload lies at `input[start..end]`.
    CloseInInput {
        code: Option<CloseCode>,
        start: usize,
        end: usize,
    },
    /// A close frame whose payload lies in `Extra::control`.
    CloseInControl { code: Option<CloseCode> },
    /// A protocol error.
    Error(ProtocolError),
}

impl Connection {
    /// A connection that has just completed the upgrade at `now`.
    pub fn new(role: Role, now: Instant) -> Self {
        Self {
            last_input: Stamp::of(now),
            extra: None,
            frame_remaining: 0,
            key: [0; 4],
            utf8: Utf8Validator::default(),
            mask_seed: match role {
                Role::Server => 0,
                Role::Client => 0x9e37_79b9,
            },
            header_len: 0,
            phase: 0,
            frame_opcode: OpCode::Continuation,
            frame: FramePos::Between,
            assembling: Assembling::None,
            state: State::Open,
            ping_outstanding: false,
            ping_queued: false,
            pong_queued: false,
            frames_in: 0,
            pings_in: 0,
            deflate_bits: 0,
        }
    }

    /// permessage-deflate was negotiated in the upgrade: the peer may send compressed
    /// messages (RSV1), and ours may be compressed with a window of `window_bits` (9 to
    /// 15). Call before any input.
    pub fn set_deflate(&mut self, window_bits: u8) {
        debug_assert!((9..=15).contains(&window_bits));
        self.deflate_bits = window_bits;
    }

    /// The window our compressed messages may use, or `None` without permessage-deflate.
    pub fn deflate_bits(&self) -> Option<u8> {
        (self.deflate_bits != 0).then_some(self.deflate_bits)
    }

    /// The caller could not take a message this connection delivered (a compressed
    /// message that did not inflate, see [`Event::Compressed`]): fails the connection as
    /// for a protocol error, queueing a close with `error`'s code.
    pub fn fail_message(&mut self, now: Instant, limits: &Limits, error: ProtocolError) {
        self.fail(now, limits, error);
    }

    /// The number of frames received since the last call, for metrics. Call it after
    /// every `handle_input` (the count wraps after 65,535 frames).
    pub fn take_frames_in(&mut self) -> u16 {
        std::mem::take(&mut self.frames_in)
    }

    /// Pings received since the last call (saturating at 255 between calls).
    pub fn take_pings_in(&mut self) -> u8 {
        std::mem::take(&mut self.pings_in)
    }

    /// A client-role connection whose masking keys derive from `seed` (RFC 6455 wants
    /// unpredictable keys from browsers; a load generator only needs them to vary).
    pub fn new_client(now: Instant, seed: u32) -> Self {
        let mut conn = Self::new(Role::Client, now);
        conn.mask_seed = seed | 1;
        conn
    }

    /// Whether data frames may still be sent: no close frame has been queued.
    pub fn can_send(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the connection has ended: drop the socket once what was polled is
    /// written.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether the connection holds no heap state (what an idle connection should be).
    pub fn is_idle(&self) -> bool {
        self.extra.is_none()
    }

    /// Feeds bytes read from the socket. Returns the number of bytes consumed and at
    /// most one event; call again with `&mut input[consumed..]` until the event is
    /// `None`, by which time all of `input` has been consumed. Payload bytes are
    /// unmasked in place, so a message that lies whole in `input` is returned as a
    /// slice of it.
    pub fn handle_input<'a>(
        &'a mut self,
        now: Instant,
        limits: &Limits,
        input: &'a mut [u8],
    ) -> (usize, Option<Event<'a>>) {
        if input.is_empty() {
            return (0, None);
        }
        match self.state {
            State::Open | State::CloseSent => {}
            State::Closing | State::Closed => return (input.len(), None),
        }
        self.last_input = Stamp::of(now);
        self.ping_outstanding = false;
        let (consumed, found) = self.step(now, limits, input);
        debug_assert!(consumed <= input.len());
        debug_assert!(found.is_some() || consumed == input.len());
        let event = found.map(|found| match found {
            Found::Borrowed {
                text,
                compressed: true,
                start,
                end,
            } => Event::Compressed {
                text,
                payload: Cow::Borrowed(&input[start..end]),
            },
            Found::Owned {
                text,
                compressed: true,
                payload,
            } => Event::Compressed {
                text,
                payload: Cow::Owned(payload),
            },
            Found::Borrowed { text, start, end, .. } => {
                let bytes = &input[start..end];
                Event::Message(if text {
                    debug_assert!(utf8::validate(bytes).is_ok());
                    // SAFETY: `step` validated these bytes as UTF-8 before reporting
                    // them, and nothing has written to `input` since.
                    Message::Text(Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(bytes) }))
                } else {
                    Message::Binary(Cow::Borrowed(bytes))
                })
            }
            Found::Owned { text, payload, .. } => Event::Message(if text {
                debug_assert!(utf8::validate(&payload).is_ok());
                // SAFETY: every byte of `payload` went through `self.utf8.feed` and the
                // message ended with `finish` succeeding, so it is valid UTF-8.
                Message::Text(Cow::Owned(unsafe { String::from_utf8_unchecked(payload) }))
            } else {
                Message::Binary(Cow::Owned(payload))
            }),
            Found::CloseInInput { code, start, end } => Event::Close {
                code,
                reason: close_reason(&input[start..end]),
            },
            Found::CloseInControl { code } => {
                let payload = self.extra.as_deref().map_or(&[][..], |extra| &extra.control[..]);
                Event::Close {
                    code,
                    reason: close_reason(payload),
                }
            }
            Found::Error(error) => Event::Error(error),
        });
        (consumed, event)
    }

    /// The input loop: consumes frames until one yields something to report.
    fn step(&mut self, now: Instant, limits: &Limits, input: &mut [u8]) -> (usize, Option<Found>) {
        let mut pos = 0;
        while pos < input.len() {
            if self.state == State::Closed || self.state == State::Closing {
                return (input.len(), None);
            }
            if self.frame == FramePos::Between {
                let (used, header) = match self.read_header(&input[pos..], limits) {
                    Ok(Some(parsed)) => parsed,
                    Ok(None) => return (input.len(), None),
                    Err(error) => return (input.len(), self.fail(now, limits, error)),
                };
                pos += used;
                self.frames_in = self.frames_in.wrapping_add(1);
                if let Err(error) = self.begin_frame(&header, limits) {
                    return (input.len(), self.fail(now, limits, error));
                }
                // Fast path: an unfragmented data message whose payload lies whole in
                // the input is unmasked in place and handed out without a copy.
                let len = self.frame_remaining as usize;
                if self.state == State::Open
                    && header.fin
                    && matches!(header.opcode, OpCode::Text | OpCode::Binary)
                    && input.len() - pos >= len
                {
                    let (start, end) = (pos, pos + len);
                    self.unmask(&mut input[start..end]);
                    self.frame = FramePos::Between;
                    self.frame_remaining = 0;
                    self.assembling = Assembling::None;
                    let text = header.opcode == OpCode::Text;
                    let compressed = header.compressed;
                    if text && !compressed && utf8::validate(&input[start..end]).is_err() {
                        return (input.len(), self.fail(now, limits, ProtocolError::InvalidUtf8));
                    }
                    return (
                        end,
                        Some(Found::Borrowed {
                            text,
                            compressed,
                            start,
                            end,
                        }),
                    );
                }
            }
            let take = (self.frame_remaining as usize).min(input.len() - pos);
            let (start, end) = (pos, pos + take);
            pos = end;
            let found = if self.frame_opcode.is_control() {
                self.control_payload(now, limits, &mut input[start..end])
            } else {
                self.data_payload(now, limits, &mut input[start..end])
            };
            if let Some(found) = found {
                return match found {
                    Found::Error(_) => (input.len(), Some(found)),
                    Found::CloseInInput { code, start: s, end: e } => (
                        pos,
                        Some(Found::CloseInInput {
                            code,
                            start: start + s,
                            end: start + e,
                        }),
                    ),
                    _ => (pos, Some(found)),
                };
            }
        }
        (pos, None)
    }

    /// Reads a frame header from `input`, completing one kept from earlier reads.
    /// Returns the bytes of `input` it used and the header.
    fn read_header(&mut self, input: &[u8], limits: &Limits) -> Result<Option<(usize, FrameHeader)>, ProtocolError> {
        let (deflate, role) = (self.deflate_bits != 0, self.role());
        if self.header_len == 0 {
            if let Some((header, used)) = decode_header_ext(input, role, limits.max_frame_bytes, deflate)? {
                return Ok(Some((used, header)));
            }
            let keep = input.len();
            debug_assert!(keep < MAX_HEADER_LEN);
            let extra = self.extra.get_or_insert_with(Box::default);
            extra.header[..keep].copy_from_slice(input);
            self.header_len = keep as u8;
            return Ok(None);
        }
        // Finish the kept header: first learn its length, then take just enough bytes.
        let kept = &mut self.extra.as_deref_mut().expect("a kept header lives in Extra").header;
        let have = usize::from(self.header_len);
        let mut used = 0;
        if have < 2 {
            used = (2 - have).min(input.len());
            kept[have..have + used].copy_from_slice(&input[..used]);
        }
        let have = have + used;
        let Some(total) = header_len(&kept[..have]) else {
            self.header_len = have as u8;
            return Ok(None);
        };
        let more = (total - have).min(input.len() - used);
        kept[have..have + more].copy_from_slice(&input[used..used + more]);
        used += more;
        let have = have + more;
        self.header_len = have as u8;
        match decode_header_ext(&kept[..have], role, limits.max_frame_bytes, deflate)? {
            Some((header, len)) => {
                debug_assert_eq!(len, have);
                self.header_len = 0;
                Ok(Some((used, header)))
            }
            None => {
                debug_assert_eq!(used, input.len());
                Ok(None)
            }
        }
    }

    /// Applies the message-level rules to a new frame header and enters its payload.
    fn begin_frame(&mut self, header: &FrameHeader, limits: &Limits) -> Result<(), ProtocolError> {
        self.frame_opcode = header.opcode;
        self.frame = if header.fin { FramePos::Last } else { FramePos::Inner };
        self.frame_remaining = u32::try_from(header.payload_len).map_err(|_| ProtocolError::FrameTooBig)?;
        self.key = header.mask.unwrap_or([0; 4]);
        self.phase = 0;
        if self.state != State::Open || header.opcode.is_control() {
            // After our close, data is only skipped: message rules no longer matter.
            return Ok(());
        }
        let so_far = match (header.opcode, self.assembling) {
            (OpCode::Continuation, Assembling::None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, assembling) if assembling != Assembling::None => {
                return Err(ProtocolError::ExpectedContinuation);
            }
            (OpCode::Continuation, _) => self.extra.as_deref().map_or(0, |extra| extra.message.len() as u64),
            _ => {
                self.assembling = match (header.opcode == OpCode::Text, header.compressed) {
                    (true, false) => Assembling::Text,
                    (false, false) => Assembling::Binary,
                    (true, true) => Assembling::CompressedText,
                    (false, true) => Assembling::CompressedBinary,
                };
                self.utf8 = Utf8Validator::default();
                0
            }
        };
        if so_far + header.payload_len > limits.max_message_bytes {
            return Err(ProtocolError::MessageTooBig);
        }
        Ok(())
    }

    fn unmask(&mut self, payload: &mut [u8]) {
        if self.role() == Role::Server {
            apply_mask(payload, self.key, usize::from(self.phase));
        }
        self.phase = ((usize::from(self.phase) + payload.len()) & 3) as u8;
    }

    /// Takes the next piece of a data frame's payload.
    fn data_payload(&mut self, now: Instant, limits: &Limits, chunk: &mut [u8]) -> Option<Found> {
        self.frame_remaining -= chunk.len() as u32;
        let frame_done = self.frame_remaining == 0;
        let fin = self.frame == FramePos::Last;
        if frame_done {
            self.frame = FramePos::Between;
        }
        if self.state != State::Open || (chunk.is_empty() && !frame_done) {
            return None;
        }
        self.unmask(chunk);
        // A compressed message's text is validated after inflation, by the caller.
        if self.assembling == Assembling::Text && self.utf8.feed(chunk).is_err() {
            return self.fail(now, limits, ProtocolError::InvalidUtf8);
        }
        let extra = self.extra.get_or_insert_with(Box::default);
        extra.message.extend_from_slice(chunk);
        if !(frame_done && fin) {
            return None;
        }
        let text = matches!(self.assembling, Assembling::Text | Assembling::CompressedText);
        let compressed = matches!(
            self.assembling,
            Assembling::CompressedText | Assembling::CompressedBinary
        );
        if text && !compressed && self.utf8.finish().is_err() {
            return self.fail(now, limits, ProtocolError::InvalidUtf8);
        }
        self.assembling = Assembling::None;
        let payload = std::mem::take(&mut extra.message);
        self.release_extra();
        Some(Found::Owned {
            text,
            compressed,
            payload,
        })
    }

    /// Takes the next piece of a control frame's payload and acts on a whole one.
    fn control_payload(&mut self, now: Instant, limits: &Limits, chunk: &mut [u8]) -> Option<Found> {
        self.unmask(chunk);
        self.frame_remaining -= chunk.len() as u32;
        let done = self.frame_remaining == 0;
        if done {
            self.frame = FramePos::Between;
        }
        let split = self.extra.as_deref().is_some_and(|extra| !extra.control.is_empty());
        if !done || split {
            let extra = self.extra.get_or_insert_with(Box::default);
            if extra.control.capacity() == 0 {
                extra.control.reserve_exact(MAX_CONTROL_PAYLOAD);
            }
            extra.control.extend_from_slice(chunk);
            if !done {
                return None;
            }
            let payload = std::mem::take(&mut extra.control);
            let found = self.control_frame(now, limits, &payload);
            let extra = self.extra.get_or_insert_with(Box::default);
            match found {
                // The close event borrows the payload from `Extra::control`: put it back.
                Some(Found::CloseInControl { .. }) => extra.control = payload,
                _ => self.release_extra(),
            }
            return found;
        }
        self.control_frame(now, limits, chunk).map(|found| match found {
            // The payload lies in the caller's input, at `chunk`; `step` turns this
            // chunk-relative range into a range of the input.
            Found::CloseInControl { code } => Found::CloseInInput {
                code,
                start: 0,
                end: chunk.len(),
            },
            other => other,
        })
    }

    /// Acts on a whole, unmasked control frame payload.
    fn control_frame(&mut self, now: Instant, limits: &Limits, payload: &[u8]) -> Option<Found> {
        match self.frame_opcode {
            OpCode::Ping => {
                if self.state == State::Open {
                    self.pings_in = self.pings_in.saturating_add(1);
                    self.queue_pong(payload);
                }
                None
            }
            OpCode::Pong => None,
            OpCode::Close => {
                let code = match parse_close_payload(payload) {
                    Ok(parsed) => parsed.map(|(code, _)| code),
                    Err(error) => {
                        // The peer has closed, however badly: answer and finish without
                        // waiting for another close.
                        if self.state == State::CloseSent {
                            self.state = State::Closed;
                            self.clear_pending();
                            return None;
                        }
                        return self.fail(now, limits, error);
                    }
                };
                match self.state {
                    State::Open => {
                        self.queue_close(now, limits, code, Cow::Borrowed(""));
                        self.state = State::Closing;
                    }
                    State::CloseSent => {
                        self.state = State::Closed;
                        self.clear_pending();
                    }
                    State::Closing | State::Closed => unreachable!("input is discarded once closing"),
                }
                Some(Found::CloseInControl { code })
            }
            OpCode::Continuation | OpCode::Text | OpCode::Binary => unreachable!("not a control opcode"),
        }
    }

    /// Fails the connection: queue a close with the error's code and discard the rest
    /// of the input. After our own close, a further error just ends the connection.
    fn fail(&mut self, now: Instant, limits: &Limits, error: ProtocolError) -> Option<Found> {
        match self.state {
            State::Open => {
                self.queue_close(now, limits, Some(error.close_code()), Cow::Borrowed(error.reason()));
                self.state = State::Closing;
                Some(Found::Error(error))
            }
            State::CloseSent => {
                self.state = State::Closed;
                self.clear_pending();
                Some(Found::Error(error))
            }
            State::Closing | State::Closed => None,
        }
    }

    /// Owes a pong for a ping with `payload`: one per ping, in order. A lone empty one
    /// needs no allocation (an idle connection's keep-alive costs nothing).
    fn queue_pong(&mut self, payload: &[u8]) {
        let queued = self.extra.as_deref().map_or(0, |extra| extra.pong_count);
        if !self.pong_queued && payload.is_empty() {
            self.pong_queued = true;
            return;
        }
        let extra = self.extra.get_or_insert_with(Box::default);
        if self.pong_queued && queued == 0 {
            // The empty pong owed so far goes first.
            extra.pongs.push_back(0);
            extra.pong_count = 1;
        }
        if extra.pong_count as usize >= MAX_QUEUED_PONGS {
            // Past the bound the oldest is answered by this one.
            let len = usize::from(extra.pongs.pop_front().expect("queued"));
            extra.pongs.drain(..len);
            extra.pong_count -= 1;
        }
        extra.pongs.push_back(payload.len() as u8);
        extra.pongs.extend(payload.iter().copied());
        extra.pong_count += 1;
        self.pong_queued = true;
    }

    /// Queues a close frame (dropping a pending heartbeat ping; pongs owed for pings
    /// that came before stay and leave first, so output keeps input order; nothing
    /// follows the close) and starts the close deadline. Drops any message being assembled.
    fn queue_close(&mut self, now: Instant, limits: &Limits, code: Option<CloseCode>, reason: Cow<'static, str>) {
        self.ping_queued = false;
        self.assembling = Assembling::None;
        let extra = self.extra.get_or_insert_with(Box::default);
        extra.message = Vec::new();
        extra.close = Some((code, reason));
        extra.close_deadline = Some(now + limits.close_timeout);
    }

    /// Forgets everything queued or buffered (the connection is over).
    fn clear_pending(&mut self) {
        self.ping_queued = false;
        self.pong_queued = false;
        self.header_len = 0;
        self.extra = None;
    }

    /// Frees `Extra` once nothing in it is needed (no header is kept in it half read).
    fn release_extra(&mut self) {
        if self.state == State::Open
            && self.header_len == 0
            && let Some(extra) = self.extra.as_deref_mut()
        {
            if extra.message.is_empty() {
                extra.message = Vec::new();
            }
            if extra.control.is_empty() {
                extra.control = Vec::new();
            }
            if extra.pongs.is_empty() {
                extra.pongs = VecDeque::new();
            }
            if extra.is_empty() {
                self.extra = None;
            }
        }
    }

    /// Starts a close handshake from our side (drain, policy, application): queues a
    /// close frame with `code` and `reason` (cut to 123 bytes), stops data, and waits up
    /// to `Limits::close_timeout` for the peer's close. Does nothing unless open.
    pub fn close(&mut self, now: Instant, limits: &Limits, code: CloseCode, reason: &str) {
        if self.state != State::Open {
            return;
        }
        debug_assert!(code.is_valid_on_wire());
        let reason = Cow::Owned(truncate_reason(reason).to_owned());
        self.queue_close(now, limits, Some(code), reason);
        self.state = State::CloseSent;
    }

    /// The peer closed the TCP stream (read returned 0). Returns whether the close
    /// handshake had completed; if not, the closure is abnormal (1006).
    pub fn handle_eof(&mut self) -> bool {
        let clean = self.state == State::Closed;
        self.state = State::Closed;
        self.clear_pending();
        clean
    }

    /// The next instant at which [`Connection::handle_timeout`] has work, or `None` once
    /// closed.
    pub fn poll_timeout(&self, limits: &Limits) -> Option<Instant> {
        match self.state {
            State::Open if self.ping_outstanding || self.ping_queued => {
                Some(self.last_input.instant() + limits.idle_timeout)
            }
            State::Open => Some(self.last_input.instant() + limits.ping_interval),
            State::CloseSent | State::Closing => self.extra.as_deref().and_then(|extra| extra.close_deadline),
            State::Closed => None,
        }
    }

    /// Runs the timers due at `now`: heartbeat pings, the idle timeout, and the close
    /// deadline. Returns what timed out, if anything.
    pub fn handle_timeout(&mut self, now: Instant, limits: &Limits) -> Option<Timeout> {
        match self.state {
            State::Open => {
                if now >= self.last_input.instant() + limits.idle_timeout {
                    self.queue_close(
                        now,
                        limits,
                        Some(CloseCode::GOING_AWAY),
                        Cow::Borrowed("heartbeat timeout"),
                    );
                    self.state = State::Closing;
                    return Some(Timeout::Heartbeat);
                }
                if now >= self.last_input.instant() + limits.ping_interval && !self.ping_outstanding {
                    self.ping_queued = true;
                    self.ping_outstanding = true;
                }
                None
            }
            State::CloseSent | State::Closing => {
                let deadline = self.extra.as_deref().and_then(|extra| extra.close_deadline);
                if deadline.is_some_and(|deadline| now >= deadline) {
                    self.state = State::Closed;
                    self.clear_pending();
                    return Some(Timeout::Close);
                }
                None
            }
            State::Closed => None,
        }
    }

    /// The next control frame to send, if any: a pong, a heartbeat ping, or the close.
    /// Nothing follows a close; once the close is polled in the closing state, the
    /// connection is closed.
    pub fn poll_transmit(&mut self) -> Option<ControlFrame> {
        let mask = self.next_mask();
        if self.pong_queued {
            let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
            let mut len = 0;
            match self.extra.as_deref_mut() {
                Some(extra) if extra.pong_count > 0 => {
                    len = usize::from(extra.pongs.pop_front().expect("a queued pong has its length"));
                    for (i, b) in extra.pongs.drain(..len).enumerate() {
                        payload[i] = b;
                    }
                    extra.pong_count -= 1;
                    self.pong_queued = extra.pong_count > 0;
                }
                _ => self.pong_queued = false,
            }
            let frame = ControlFrame::new(OpCode::Pong, &payload[..len], mask);
            self.release_extra();
            return Some(frame);
        }
        if self.ping_queued {
            self.ping_queued = false;
            return Some(ControlFrame::new(OpCode::Ping, &[], mask));
        }
        let extra = self.extra.as_deref_mut()?;
        let (code, reason) = extra.close.take()?;
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let len = match code {
            None => 0,
            Some(code) => {
                payload[..2].copy_from_slice(&code.0.to_be_bytes());
                payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
                2 + reason.len()
            }
        };
        if self.state == State::Closing {
            self.state = State::Closed;
            self.extra = None;
        }
        Some(ControlFrame::new(OpCode::Close, &payload[..len], mask))
    }

    /// Appends a whole data message to `out`, framed for our role (masked when we are
    /// the client). Servers fanning out to many connections use `SharedFrame` instead;
    /// either way, data may only be sent while [`Connection::can_send`].
    pub fn write_message(&mut self, out: &mut Vec<u8>, text: bool, payload: &[u8]) -> Result<(), NotOpen> {
        if self.state != State::Open {
            return Err(NotOpen);
        }
        let opcode = if text { OpCode::Text } else { OpCode::Binary };
        let mask = self.next_mask();
        encode_frame(out, true, opcode, payload, mask);
        Ok(())
    }

    /// Which end we are (decides masking).
    fn role(&self) -> Role {
        if self.mask_seed == 0 {
            Role::Server
        } else {
            Role::Client
        }
    }

    /// A fresh masking key in the client role (xorshift32), `None` in the server role.
    fn next_mask(&mut self) -> Option<[u8; 4]> {
        if self.role() == Role::Server {
            return None;
        }
        let mut x = self.mask_seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_seed = x;
        Some(x.to_ne_bytes())
    }
}

/// The reason part of a close payload that `parse_close_payload` already accepted.
fn close_reason(payload: &[u8]) -> &str {
    match payload {
        [_, _, reason @ ..] => std::str::from_utf8(reason).unwrap_or_default(),
        _ => "",
    }
}

/// Fuzz entry point, shared by the property tests and the real fuzzer
/// (`scripts/fuzz.sh`). `data` is read as a seed for chunk sizes and either raw input
/// (first byte even) or a list of frames to build (first byte odd), so the fuzzer
/// reaches deep states instead of failing on the first unmasked header. The stream is
/// fed whole and in chunks; the invariants checked are those of [`check_stream`].
#[doc(hidden)]
pub fn fuzz_connection(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((seed, rest)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let stream = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        build_frames(rest)
    };
    let limits = Limits {
        max_frame_bytes: 300,
        max_message_bytes: 600,
        ..Limits::default()
    };
    // Odd seeds negotiate permessage-deflate, so RSV1 frames reach the inflater.
    let seed = u32::from_le_bytes(*seed);
    check_stream_with(&limits, &stream, seed, seed & 1 == 1);
}

/// Builds masked client frames from fuzz input: per frame, a first header byte (any
/// bits, so reserved bits and opcodes are reached), a length byte, then that many
/// payload bytes (fewer if the input runs out). The key varies per frame.
#[doc(hidden)]
pub fn build_frames(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut key_seed = 0x1234_5678u32;
    while let [first, len, rest @ ..] = data {
        let len = usize::from(*len).min(rest.len());
        let (payload, tail) = rest.split_at(len);
        key_seed = key_seed.rotate_left(7) ^ u32::from(*first);
        let key = key_seed.to_le_bytes();
        let header = encode_header(true, OpCode::Binary, len as u64, Some(key));
        let start = out.len();
        out.extend_from_slice(header.as_bytes());
        out[start] = *first;
        let body = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[body..], key, 0);
        data = tail;
    }
    out
}

/// An event with owned data, to compare runs.
#[doc(hidden)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedEvent {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A close frame from the peer.
    Close(Option<u16>, String),
    /// A protocol error.
    Error(ProtocolError),
    /// A control frame we sent: opcode and payload.
    Sent(u8, Vec<u8>),
    /// A compressed message, before inflation (`run_stream` inflates it).
    Compressed(bool, Vec<u8>),
}

impl OwnedEvent {
    fn from_event(event: &Event<'_>) -> Self {
        match event {
            Event::Message(Message::Text(t)) => Self::Text(t.to_string()),
            Event::Message(Message::Binary(b)) => Self::Binary(b.to_vec()),
            Event::Close { code, reason } => Self::Close(code.map(|c| c.0), reason.to_string()),
            Event::Error(e) => Self::Error(*e),
            Event::Compressed { text, payload } => Self::Compressed(*text, payload.to_vec()),
        }
    }
}

/// Feeds `stream` to a fresh server connection in chunks whose sizes come from `seed`
/// (`u32::MAX` means one chunk), polling transmits after every chunk, and returns what
/// happened. Checks the invariants of every step:
/// - each call consumes at most its input, and all of it when it reports no event;
/// - no data event after a close or an error;
/// - messages respect the size limit and text is UTF-8;
/// - sent control frames are unmasked, at most 127 bytes, and nothing follows a close;
/// - an error's close code is one that may go on the wire.
#[doc(hidden)]
pub fn run_stream(limits: &Limits, stream: &[u8], seed: u32) -> Vec<OwnedEvent> {
    run_stream_with(limits, stream, seed, false)
}

/// [`run_stream`] on a connection that negotiated permessage-deflate when `deflate`:
/// compressed messages are inflated as the shard does (bounded, text validated), and
/// reported as the message or as the error that failed the connection.
#[doc(hidden)]
pub fn run_stream_with(limits: &Limits, stream: &[u8], seed: u32, deflate: bool) -> Vec<OwnedEvent> {
    let now = Instant::now();
    let mut conn = Connection::new(Role::Server, now);
    if deflate {
        conn.set_deflate(15);
    }
    let mut inflater = super::deflate::Inflater::default();
    let mut inflated = Vec::new();
    let mut buf = stream.to_vec();
    let mut events = Vec::new();
    let mut rng = seed | 1;
    let mut at = 0;
    let mut ended = false;
    let mut close_sent = false;
    while at < buf.len() {
        let size = if seed == u32::MAX {
            buf.len()
        } else {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            1 + (rng as usize % 40)
        };
        let end = (at + size).min(buf.len());
        let mut off = at;
        loop {
            let (used, event) = conn.handle_input(now, limits, &mut buf[off..end]);
            assert!(off + used <= end, "consumed more than given");
            let Some(event) = event else {
                assert_eq!(off + used, end, "no event but input left");
                break;
            };
            off += used;
            let mut owned = OwnedEvent::from_event(&event);
            if let OwnedEvent::Compressed(text, payload) = &owned {
                owned = match inflater.inflate(payload, *text, limits.max_message_bytes, &mut inflated) {
                    Ok(()) if *text => OwnedEvent::Text(String::from_utf8(inflated.clone()).expect("validated")),
                    Ok(()) => OwnedEvent::Binary(inflated.clone()),
                    Err(error) => {
                        conn.fail_message(now, limits, error);
                        OwnedEvent::Error(error)
                    }
                };
            }
            match &owned {
                OwnedEvent::Text(t) => {
                    assert!(!ended, "data after close");
                    assert!(t.len() as u64 <= limits.max_message_bytes);
                }
                OwnedEvent::Binary(b) => {
                    assert!(!ended, "data after close");
                    assert!(b.len() as u64 <= limits.max_message_bytes);
                }
                OwnedEvent::Close(..) | OwnedEvent::Error(_) => {
                    assert!(!ended, "second close or error");
                    ended = true;
                }
                OwnedEvent::Sent(..) | OwnedEvent::Compressed(..) => unreachable!(),
            }
            if let OwnedEvent::Error(e) = &owned {
                assert!(e.close_code().is_valid_on_wire());
            }
            events.push(owned);
        }
        while let Some(frame) = conn.poll_transmit() {
            let bytes = frame.as_bytes();
            assert!(!close_sent, "frame after close");
            assert!(bytes.len() <= 2 + MAX_CONTROL_PAYLOAD);
            assert_eq!(bytes[1] & 0x80, 0, "server frames are unmasked");
            assert_eq!(usize::from(bytes[1]), bytes.len() - 2);
            close_sent = frame.opcode() == OpCode::Close;
            if close_sent && bytes.len() >= 4 {
                let code = CloseCode(u16::from_be_bytes([bytes[2], bytes[3]]));
                assert!(code.is_valid_on_wire());
                assert!(std::str::from_utf8(&bytes[4..]).is_ok());
            }
            events.push(OwnedEvent::Sent(frame.opcode() as u8, bytes[2..].to_vec()));
        }
        at = end;
    }
    events
}

/// Runs `stream` whole and in chunks from `seed`: both runs must see the same events,
/// and the same pongs in the same order (one per ping, however the input was split;
/// where pongs fall between the other events depends on when the caller polls).
#[doc(hidden)]
pub fn check_stream(limits: &Limits, stream: &[u8], seed: u32) {
    check_stream_with(limits, stream, seed, false);
}

/// [`check_stream`] with permessage-deflate negotiated when `deflate`.
#[doc(hidden)]
pub fn check_stream_with(limits: &Limits, stream: &[u8], seed: u32, deflate: bool) {
    let whole = run_stream_with(limits, stream, u32::MAX, deflate);
    let chunked = run_stream_with(limits, stream, seed, deflate);
    let is_pong = |e: &OwnedEvent| matches!(e, OwnedEvent::Sent(op, _) if *op == OpCode::Pong as u8);
    let split =
        |events: Vec<OwnedEvent>| -> (Vec<OwnedEvent>, Vec<OwnedEvent>) { events.into_iter().partition(is_pong) };
    let (whole_pongs, whole) = split(whole);
    let (chunked_pongs, chunked) = split(chunked);
    assert_eq!(whole, chunked, "chunking changed the outcome");
    assert_eq!(whole_pongs, chunked_pongs, "chunking changed the pongs");
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
