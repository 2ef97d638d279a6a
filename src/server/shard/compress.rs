//! permessage-deflate on a shard: the upgrade's agreement, compressed input inflated,
//! output compressed for the connections that agreed to it.
//!
//! In: compressed messages from `frames` (`Event::Compressed`), frames bound for a
//! connection that negotiated compression. Out: the inflated message (or the error that
//! fails the connection), and the frame to queue: compressed, or the same frame when it
//! is small (`--compression-min-bytes`), a control frame, or did not shrink.
//!
//! One [`Deflater`] and one [`Inflater`] per shard serve every connection (each message
//! is compressed on its own: no context takeover), and a frame fanned out to many
//! connections in one turn is compressed once: the compressed frame is kept, keyed by
//! the shared frame's allocation, until the turn's output is flushed.

use crate::metrics::ShardMetrics;
use crate::proto::close::ProtocolError;
use crate::proto::deflate::{Deflater, Inflater};
use crate::proto::frame::SharedFrame;

/// Distinct frames kept compressed within one turn (a fan-out turn carries a few room
/// messages; past this the oldest are compressed again if met again).
const TURN_CACHE: usize = 32;

/// The shard's compression state (present only with `--compression on`).
#[derive(Debug)]
pub(super) struct ShardCompression {
    deflater: Deflater,
    inflater: Inflater,
    /// The last inflated message (read by messaging or echoed before the next one).
    pub(super) inflated: Vec<u8>,
    /// Compressor output before it becomes a frame.
    scratch: Vec<u8>,
    /// This turn's compressed frames: the original (kept so its address stays unique),
    /// the window, and the compressed frame (`None`: sent as it is).
    turn: Vec<(SharedFrame, u8, Option<SharedFrame>)>,
    min_bytes: usize,
}

impl ShardCompression {
    pub(super) fn new(level: u32, min_bytes: u64) -> Self {
        Self {
            deflater: Deflater::new(flate2::Compression::new(level)),
            inflater: Inflater::default(),
            inflated: Vec::new(),
            scratch: Vec::new(),
            turn: Vec::new(),
            min_bytes: usize::try_from(min_bytes).unwrap_or(usize::MAX),
        }
    }

    /// Inflates a compressed message into [`Self::inflated`], bounded by `max_bytes`.
    pub(super) fn inflate(
        &mut self,
        payload: &[u8],
        text: bool,
        max_bytes: u64,
        metrics: &mut ShardMetrics,
    ) -> Result<(), ProtocolError> {
        self.inflater.inflate(payload, text, max_bytes, &mut self.inflated)?;
        ShardMetrics::bump(&mut metrics.compression, "messages_in");
        *metrics.compression.entry("bytes_in_compressed").or_default() += payload.len() as u64;
        *metrics.compression.entry("bytes_in_plain").or_default() += self.inflated.len() as u64;
        Ok(())
    }

    /// The frame to queue for a connection that agreed to compression with a window of
    /// `bits`: compressed once per turn when `shared` (a frame that may go to many
    /// connections), or just for this connection.
    pub(super) fn frame_for(
        &mut self,
        frame: SharedFrame,
        bits: u8,
        shared: bool,
        metrics: &mut ShardMetrics,
    ) -> SharedFrame {
        let Some(opcode) = frame.plain_data_opcode() else {
            return frame;
        };
        if frame.payload().len() < self.min_bytes {
            return frame;
        }
        if shared
            && let Some((_, _, compressed)) = self
                .turn
                .iter()
                .rev()
                .find(|(original, b, _)| *b == bits && original.ptr_eq(&frame))
        {
            return compressed.clone().unwrap_or(frame);
        }
        self.scratch.clear();
        let compressed = self
            .deflater
            .compress(frame.payload(), bits, &mut self.scratch)
            .then(|| SharedFrame::compressed(opcode, &self.scratch));
        match &compressed {
            Some(_) => {
                ShardMetrics::bump(&mut metrics.compression, "messages_out");
                *metrics.compression.entry("bytes_out_plain").or_default() += frame.payload().len() as u64;
                *metrics.compression.entry("bytes_out_compressed").or_default() += self.scratch.len() as u64;
            }
            None => ShardMetrics::bump(&mut metrics.compression, "not_smaller"),
        }
        if shared {
            if self.turn.len() == TURN_CACHE {
                self.turn.remove(0);
            }
            self.turn.push((frame.clone(), bits, compressed.clone()));
        }
        compressed.unwrap_or(frame)
    }

    /// The turn's output is flushed: forget its frames, and buffers a huge message left.
    pub(super) fn end_turn(&mut self) {
        self.turn.clear();
        for buf in [&mut self.inflated, &mut self.scratch] {
            if buf.capacity() > 1 << 20 {
                *buf = Vec::new();
            }
        }
    }
}
