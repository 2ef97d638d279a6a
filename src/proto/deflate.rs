//! permessage-deflate (RFC 7692) with no state per connection.
//!
//! - [`negotiate`]: picks the first acceptable `permessage-deflate` offer of a request
//!   and says what the 101 answers ([`Agreement::response`]). The answer always carries
//!   `server_no_context_takeover; client_no_context_takeover`: every message is
//!   compressed on its own in both directions, so nothing about a connection's stream
//!   has to be kept between its messages.
//! - [`Deflater`]: one per shard; compresses a message payload for any connection (one
//!   zlib stream per window size in use, reset before each message).
//! - [`Inflater`]: one per shard; inflates a whole compressed message with its output
//!   bounded while it runs (a small frame that would inflate past the limit stops at the
//!   limit), validating text as UTF-8 on the inflated bytes as they come out.
//!
//! Why no context takeover: a zlib stream costs about 300 KB to compress and 40 KB to
//! inflate. Kept per connection, that is 100 times what an idle connection costs here;
//! reset per message, two streams per shard serve every connection, and an idle
//! connection costs exactly what it costs without compression (one bit in its state).
//! The price is compression ratio on small messages that repeat earlier ones, which is
//! what `--compression-min-bytes` is for: small messages go uncompressed anyway.
#![forbid(unsafe_code)]

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use std::borrow::Cow;

use super::close::ProtocolError;
use super::connection::Message;
use super::handshake::Extension;
use super::utf8::Utf8Validator;

/// The extension's token.
pub const EXTENSION: &str = "permessage-deflate";

/// What a sender strips from the end of each compressed message and a receiver appends
/// back (the empty stored block of a sync flush, RFC 7692 section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The smallest LZ77 window we can honour: zlib's raw deflate does not do 256-byte
/// windows (it silently uses 512), so an offer that insists on 8 is declined.
const MIN_WINDOW_BITS: u8 = 9;

/// The accepted offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreement {
    /// The LZ77 window our messages may use (`server_max_window_bits`, 15 when the
    /// client set no bound).
    pub server_window_bits: u8,
    /// Whether the client offered `server_max_window_bits` (the answer must then carry
    /// it, RFC 7692 section 7.1.2.1).
    server_bits_offered: bool,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` value of the 101.
    pub fn response(&self) -> String {
        let mut out = String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        if self.server_bits_offered {
            out.push_str("; server_max_window_bits=");
            out.push_str(&self.server_window_bits.to_string());
        }
        out
    }
}

/// The first `permessage-deflate` offer we can honour, in the client's order of
/// preference (RFC 7692 section 5). An offer is declined, and the next one considered,
/// when it has an unknown parameter, a parameter twice, a value where none belongs, or
/// a window size that is not 8 to 15 (or is 8 for our side: zlib's raw deflate has no
/// 256-byte window).
/// Everything else is acceptable, since we never keep context: we honour
/// `server_no_context_takeover` by construction and always add
/// `client_no_context_takeover`, and our inflater takes any window up to 15 bits, so
/// `client_max_window_bits` needs no answer.
pub fn negotiate<'b>(offers: impl IntoIterator<Item = Extension<'b>>) -> Option<Agreement> {
    offers
        .into_iter()
        .filter(|offer| offer.name.eq_ignore_ascii_case(EXTENSION))
        .find_map(|offer| accept(&offer))
}

/// One offer's parameters, or `None` to decline it.
fn accept(offer: &Extension<'_>) -> Option<Agreement> {
    let mut seen = [false; 4];
    let mut server_bits = None;
    for (name, value) in offer.params() {
        let index = [
            "server_no_context_takeover",
            "client_no_context_takeover",
            "server_max_window_bits",
            "client_max_window_bits",
        ]
        .iter()
        .position(|known| name.eq_ignore_ascii_case(known))?;
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
        match index {
            0 | 1 if value.is_some() => return None,
            2 => server_bits = Some(window_bits(value.as_deref()?)?),
            3 => {
                if let Some(value) = value {
                    window_bits(&value)?;
                }
            }
            _ => {}
        }
    }
    if server_bits.is_some_and(|bits| bits < MIN_WINDOW_BITS) {
        return None;
    }
    Some(Agreement {
        server_window_bits: server_bits.unwrap_or(15),
        server_bits_offered: server_bits.is_some(),
    })
}

/// A window size value: a decimal 8 to 15 without leading zeros (RFC 7692 section
/// 7.1.2.1).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') {
        return None;
    }
    value.parse::<u8>().ok().filter(|bits| (8..=15).contains(bits))
}

/// Compresses messages, each on its own (one zlib stream per window size, made when
/// first needed and reset before every message).
pub struct Deflater {
    level: Compression,
    /// Index `bits - MIN_WINDOW_BITS`.
    streams: [Option<Box<Compress>>; 7],
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let made: Vec<u8> = (MIN_WINDOW_BITS..=15)
            .filter(|bits| self.streams[usize::from(bits - MIN_WINDOW_BITS)].is_some())
            .collect();
        f.debug_struct("Deflater")
            .field("level", &self.level)
            .field("windows", &made)
            .finish()
    }
}

impl Default for Deflater {
    fn default() -> Self {
        Self::new(Compression::new(1))
    }
}

impl Deflater {
    /// A deflater at `level` (1 is zlib's fastest; a gateway compresses every fan-out
    /// message once per shard and wants speed over the last few percent).
    pub fn new(level: Compression) -> Self {
        Self {
            level,
            streams: Default::default(),
        }
    }

    /// Appends the compressed form of `payload` to `out`, as it goes in a frame with
    /// RSV1 (the trailing `00 00 ff ff` removed), using at most a `2^window_bits` window.
    /// Returns false, with `out` as it was, when compression would not make the message
    /// smaller: it is then sent as it is (RFC 7692 lets each message choose).
    pub fn compress(&mut self, payload: &[u8], window_bits: u8, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        self.deflate_into(payload, window_bits, out);
        if out.len() - start >= payload.len() {
            out.truncate(start);
            return false;
        }
        true
    }

    /// Appends the compressed form of `payload` to `out` whatever its size (what
    /// [`Self::compress`] does before it compares).
    pub fn deflate_into(&mut self, payload: &[u8], window_bits: u8, out: &mut Vec<u8>) {
        let bits = window_bits.clamp(MIN_WINDOW_BITS, 15);
        let level = self.level;
        let stream = self.streams[usize::from(bits - MIN_WINDOW_BITS)]
            .get_or_insert_with(|| Box::new(Compress::new_with_window_bits(level, false, bits)));
        stream.reset();
        let start = out.len();
        // A sync flush ends the data with an empty stored block (`00 00 ff ff`), which
        // is stripped; 64 bytes of slack cover the block headers of stored output.
        out.reserve(payload.len() + 64);
        loop {
            let before = stream.total_in() as usize;
            let status = stream
                .compress_vec(&payload[before..], out, FlushCompress::Sync)
                .expect("compressing into a growing buffer cannot fail");
            debug_assert!(matches!(status, Status::Ok | Status::BufError));
            let done = stream.total_in() as usize == payload.len() && out.len() < out.capacity();
            if done {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        debug_assert!(out[start..].ends_with(&TAIL));
        out.truncate(out.len() - TAIL.len());
    }
}

/// Inflates whole messages, each on its own, with bounded output.
pub struct Inflater {
    stream: Box<Decompress>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self {
            stream: Box::new(Decompress::new_with_window_bits(false, 15)),
        }
    }
}

/// The size of each step of inflation: the bound is checked, and text validated, after
/// each.
const INFLATE_STEP: usize = 16 * 1024;

impl Inflater {
    /// Inflates the payload of one compressed message (its frames' payloads joined)
    /// into `out` (cleared first). Fails with [`ProtocolError::MessageTooBig`] (1009) as
    /// soon as the output would pass `max_bytes`, having produced at most one byte more;
    /// with [`ProtocolError::InvalidUtf8`] (1007) at the first step whose
    /// inflated text is not UTF-8 when `text`; with [`ProtocolError::BadDeflate`] (1007)
    /// when the data is not DEFLATE. A message that ends with a final block
    /// (`BFINAL` set) ends there.
    pub fn inflate(
        &mut self,
        input: &[u8],
        text: bool,
        max_bytes: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        out.clear();
        let stream = &mut self.stream;
        stream.reset(false);
        let mut utf8 = Utf8Validator::default();
        let max = usize::try_from(max_bytes).unwrap_or(usize::MAX).min(usize::MAX - 1);
        let finish = |utf8: &Utf8Validator| {
            if text && utf8.finish().is_err() {
                Err(ProtocolError::InvalidUtf8)
            } else {
                Ok(())
            }
        };
        // The payload, then the tail the sender removed.
        for part in [input, &TAIL[..]] {
            let mut used = 0;
            loop {
                let checked = out.len();
                let before_in = stream.total_in();
                // One byte past the limit is room enough to learn that it was passed.
                let room = INFLATE_STEP.min(max + 1 - checked);
                let status = decompress_bounded(stream, &part[used..], out, checked + room)
                    .map_err(|_| ProtocolError::BadDeflate)?;
                used += (stream.total_in() - before_in) as usize;
                if out.len() > max {
                    return Err(ProtocolError::MessageTooBig);
                }
                if text && utf8.feed(&out[checked..]).is_err() {
                    return Err(ProtocolError::InvalidUtf8);
                }
                if status == Status::StreamEnd {
                    // A final block (BFINAL): what follows, the tail at least, is not data.
                    return finish(&utf8);
                }
                let full = out.len() == checked + room;
                if used == part.len() && !full {
                    break;
                }
                if out.len() == checked && stream.total_in() == before_in {
                    return Err(ProtocolError::BadDeflate);
                }
            }
        }
        finish(&utf8)
    }
}

/// An inflated message (`Inflater::inflate`'s output) as a [`Message`] borrowing it, to
/// go on like a message that arrived plain.
pub fn inflated_message(bytes: &[u8], text: bool) -> Message<'_> {
    if text {
        Message::Text(Cow::Borrowed(
            std::str::from_utf8(bytes).expect("the inflater validated the text"),
        ))
    } else {
        Message::Binary(Cow::Borrowed(bytes))
    }
}

/// One `decompress` call writing at most up to `out.len() == limit`.
fn decompress_bounded(
    stream: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<Status, flate2::DecompressError> {
    let start = out.len();
    out.resize(limit, 0);
    let before = stream.total_out();
    let result = stream.decompress(input, &mut out[start..], FlushDecompress::Sync);
    let produced = (stream.total_out() - before) as usize;
    out.truncate(start + produced);
    result
}

/// Fuzz entry point, shared by the property tests and the real fuzzer
/// (`scripts/fuzz.sh`): inflates arbitrary bytes as text and as binary under a small
/// limit. Checks that it never panics, that output never passes the limit by more than
/// one step, that accepted text is UTF-8, and that whatever inflates also survives a
/// round trip through the deflater.
#[doc(hidden)]
pub fn fuzz_inflate(data: &[u8]) {
    let mut inflater = Inflater::default();
    let mut out = Vec::new();
    for text in [false, true] {
        let limit = 4096;
        match inflater.inflate(data, text, limit, &mut out) {
            Ok(()) => {
                assert!(out.len() as u64 <= limit);
                if text {
                    assert!(std::str::from_utf8(&out).is_ok());
                }
                let mut deflater = Deflater::default();
                let mut packed = Vec::new();
                if deflater.compress(&out, 15, &mut packed) {
                    let mut again = Vec::new();
                    inflater
                        .inflate(&packed, text, limit, &mut again)
                        .expect("our own output inflates");
                    assert_eq!(again, out);
                }
            }
            Err(error) => {
                assert!(out.len() <= limit as usize + INFLATE_STEP);
                assert!(matches!(
                    error,
                    ProtocolError::MessageTooBig | ProtocolError::InvalidUtf8 | ProtocolError::BadDeflate
                ));
            }
        }
    }
}

#[cfg(test)]
#[path = "deflate_tests.rs"]
mod tests;
