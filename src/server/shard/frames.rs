//! WebSocket frames through the connection's state machine, and the hand-off to
//! messaging.
//!
//! In: frame bytes in the shard buffer for an open connection, and what messaging
//! produced this turn (frames for connections, closes, cross-shard messages). Out:
//! messages to messaging (or echoed in `--echo` mode), the message-rate limit applied,
//! control frames (pong, ping, close) and messaging's frames queued on the connection
//! (see `send`), and a finished WebSocket moved towards its end (see `close`).

use std::time::Instant;

use crate::edge;
use crate::limits::Limits;
use crate::metrics::ShardMetrics;
use crate::msg::core::{MsgShard, Output};
use crate::msg::protocol::FrameKind;
use crate::proto::close::CloseCode;
use crate::proto::connection::{Connection, Event, Message};
use crate::proto::frame::{OpCode, SharedFrame};
use crate::slab::Key;

use super::slot::{Out, Phase, sock};
use super::{MESH_RECV_BATCH, SEND_FLAGS, Shard};

impl Shard {
    /// Takes what other shards sent (start of a turn and every tick).
    pub(super) fn recv_mesh(&mut self) {
        if let (Some(msg), Some(mesh)) = (self.msg.as_mut(), self.mesh.as_mut()) {
            msg.recv_mesh(mesh, self.now, MESH_RECV_BATCH);
        }
    }

    /// Sends what messaging produced: cross-shard messages onto the rings, frames onto
    /// the connections' send queues (shared, encoded once), closes to the connections
    /// that broke the protocol.
    pub(super) fn flush_messaging(&mut self) {
        let Some(msg) = self.msg.as_mut() else { return };
        if let Some(mesh) = self.mesh.as_mut() {
            msg.flush_mesh(mesh, self.now);
        }
        while let Some(output) = self.msg.as_mut().and_then(MsgShard::poll_output) {
            match output {
                Output::Send { conn: key, frame } => {
                    if self.slots.contains(key) && self.slots[key].phase == Phase::Open && self.slots[key].ws.can_send()
                    {
                        self.metrics.messages_out += 1;
                        let frame = self.outgoing(key, frame, true);
                        self.enqueue(key, Out::Frame(frame), false);
                    }
                }
                Output::Close {
                    conn: key,
                    code,
                    reason,
                } => self.close_for(key, code, reason),
                Output::UserLimit { conn: key, replaced } => {
                    let (label, reason) = Output::user_limit_label(replaced);
                    ShardMetrics::bump(&mut self.metrics.limit_hits, label);
                    self.close_for(key, CloseCode::POLICY_VIOLATION, reason);
                }
            }
        }
        if let Some(compress) = self.compress.as_deref_mut() {
            compress.end_turn();
        }
        if self.mesh.as_ref().is_some_and(|mesh| mesh.pending() > 0) {
            // Messages wait for room on a ring: come back soon rather than at the tick.
            self.handle.bell.ring();
        }
        self.flush_cluster();
    }

    /// Closes `key` with `code` for messaging, if it is still open (a stale key or a
    /// closing connection is left alone).
    fn close_for(&mut self, key: Key, code: CloseCode, reason: &'static str) {
        if self.slots.contains(key) && self.slots[key].phase == Phase::Open {
            self.slots[key].ws.close(self.now, &self.cfg.limits, code, reason);
            self.after_protocol(key);
        }
    }

    /// Frame bytes arrived in `buf[start..end]` for an open connection.
    pub(super) fn on_frame_bytes(&mut self, key: Key, start: usize, end: usize) {
        let mut off = start;
        while off < end {
            let echo = self.cfg.echo;
            let slot = &mut self.slots[key];
            let sending = slot.ws.can_send();
            let (used, event) = slot
                .ws
                .handle_input(self.now, &self.cfg.limits, &mut self.buf[off..end]);
            let Some(event) = event else {
                self.charge_pings(key);
                break;
            };
            off += used;
            // A compressed message is inflated here (bounded, text validated) and goes
            // on like any other; if it does not inflate, the connection fails with the
            // error's code once the event is out of the way.
            let mut inflate_error = None;
            let event = match event {
                Event::Compressed { text, payload } if sending => {
                    let compress = self
                        .compress
                        .as_deref_mut()
                        .expect("negotiated only with compression on");
                    match compress.inflate(&payload, text, self.cfg.limits.max_message_bytes, &mut self.metrics) {
                        Ok(()) => Event::Message(crate::proto::deflate::inflated_message(&compress.inflated, text)),
                        Err(error) => {
                            inflate_error = Some(error);
                            Event::Error(error)
                        }
                    }
                }
                event => event,
            };
            let reply = match event {
                Event::Message(_) | Event::Compressed { .. } if !sending => {
                    // We are closing (e.g. over the message rate): what still arrives
                    // is read for the close handshake but not acted on.
                    None
                }
                Event::Message(message) => {
                    self.metrics.messages_in += 1;
                    if let Some(limit) = self.message_rate
                        && !limit.allow(&mut slot.tat, edge::micros_since(self.epoch, self.now))
                    {
                        over_rate(&mut slot.ws, self.now, &self.cfg.limits, &mut self.metrics);
                        continue;
                    }
                    if let Some(msg) = self.msg.as_mut() {
                        // Messaging: what it answers comes out of `flush_messaging` at
                        // the end of the turn, batched with everything else.
                        let (kind, payload) = match &message {
                            Message::Text(text) => (FrameKind::Text, text.as_bytes()),
                            Message::Binary(bytes) => (FrameKind::Binary, &bytes[..]),
                        };
                        msg.handle_client_frame(key, kind, payload, self.now);
                        None
                    } else {
                        echo.then(|| match &message {
                            Message::Text(text) => SharedFrame::new(OpCode::Text, text.as_bytes()),
                            Message::Binary(bytes) => SharedFrame::new(OpCode::Binary, bytes),
                        })
                    }
                }
                Event::Close { code, .. } => {
                    slot.peer_closed = true;
                    let code = code.map_or(CloseCode::NO_STATUS.0, |c| c.0);
                    ShardMetrics::bump(&mut self.metrics.close_codes_received, code);
                    None
                }
                Event::Error(error) => {
                    ShardMetrics::bump(&mut self.metrics.protocol_errors, error.label());
                    None
                }
                Event::Compressed { .. } => unreachable!("inflated above"),
            };
            if let Some(error) = inflate_error {
                self.slots[key].ws.fail_message(self.now, &self.cfg.limits, error);
            }
            self.metrics.frames_in += u64::from(self.slots[key].ws.take_frames_in());
            self.charge_pings(key);
            // Pongs (and a close) owed for what came before this message leave before
            // its echo: output keeps input order.
            self.take_controls(key);
            if let Some(frame) = reply
                && self.slots[key].ws.can_send()
            {
                self.metrics.messages_out += 1;
                let frame = self.outgoing(key, frame, false);
                self.enqueue(key, Out::Frame(frame), false);
            }
        }
        self.after_protocol(key);
    }

    /// The frame to queue for `key`: compressed when the connection agreed to
    /// permessage-deflate (once per turn for a `shared` frame), else `frame` itself.
    fn outgoing(&mut self, key: Key, frame: SharedFrame, shared: bool) -> SharedFrame {
        match (self.slots[key].ws.deflate_bits(), self.compress.as_deref_mut()) {
            (Some(bits), Some(compress)) => compress.frame_for(frame, bits, shared, &mut self.metrics),
            _ => frame,
        }
    }

    /// Collects the control frames the state machine wants sent, reschedules its
    /// deadline, and moves a finished connection towards its end.
    pub(super) fn after_protocol(&mut self, key: Key) {
        self.take_controls(key);
        if self.slots[key].ws.is_closed() {
            self.leave_open(key);
            let slot = &mut self.slots[key];
            let io = slot.io.get_or_insert_with(Box::default);
            io.close_after_flush = true;
            io.deadline = Some(self.now + self.cfg.limits.close_timeout);
            self.mark_dirty(key);
        }
        self.schedule(key);
    }

    /// Pings count toward the message rate like messages: each is answered with a
    /// pong, so a ping flood is closed (1008) like a message flood.
    fn charge_pings(&mut self, key: Key) {
        let slot = &mut self.slots[key];
        let pings = slot.ws.take_pings_in();
        let Some(limit) = self.message_rate else { return };
        for _ in 0..pings {
            if !limit.allow(&mut slot.tat, edge::micros_since(self.epoch, self.now)) {
                over_rate(&mut slot.ws, self.now, &self.cfg.limits, &mut self.metrics);
                return;
            }
        }
    }

    /// Queues the control frames the state machine owes (pongs in the order of their
    /// pings, the heartbeat ping, the close).
    fn take_controls(&mut self, key: Key) {
        while let Some(control) = self.slots[key].ws.poll_transmit() {
            if control.opcode() == OpCode::Close {
                let bytes = control.as_bytes();
                let code = if bytes.len() >= 4 {
                    u16::from_be_bytes([bytes[2], bytes[3]])
                } else {
                    1005
                };
                ShardMetrics::bump(&mut self.metrics.close_codes_sent, code);
            }
            // The heartbeat ping is the same two bytes for everyone: share one copy, and
            // when nothing else is queued write it at once, so a heartbeat round over a
            // million idle connections allocates nothing (no `Io`, no queue).
            let frame = if control.as_bytes() == self.ping.as_bytes() {
                if self.ping_directly(key) {
                    continue;
                }
                self.ping.clone()
            } else {
                SharedFrame::from_wire(control.as_bytes())
            };
            self.enqueue(key, Out::Frame(frame), true);
        }
    }

    /// Writes the shared ping straight to an idle connection's socket. False (nothing
    /// written) when output is queued or pending, or the socket does not take the whole
    /// frame now: then it is queued like any frame.
    pub(super) fn ping_directly(&mut self, key: Key) -> bool {
        let slot = &self.slots[key];
        if slot.io.as_deref().is_some_and(|io| !io.queue.is_empty()) || slot.write_armed {
            return false;
        }
        let bytes = self.ping.as_bytes();
        // Two bytes into an empty send buffer are taken whole or not at all (EAGAIN) in
        // practice; a short write is still handled below by never claiming success for it.
        match sock(&slot.fd).send_with_flags(bytes, SEND_FLAGS) {
            Ok(n) if n == bytes.len() => {
                self.metrics.frames_out += 1;
                self.metrics.bytes_out += n as u64;
                true
            }
            Ok(0) | Err(_) => false,
            Ok(n) => {
                // Part of the frame is out: the rest must follow before anything else.
                self.metrics.frames_out += 1;
                self.metrics.bytes_out += n as u64;
                let rest: Box<[u8]> = bytes[n..].into();
                self.enqueue(key, Out::Bytes(rest), true);
                true
            }
        }
    }
}

/// A connection went over `--message-rate` (messages and pings alike): counted, and
/// closed with 1008.
fn over_rate(ws: &mut Connection, now: Instant, limits: &Limits, metrics: &mut ShardMetrics) {
    ShardMetrics::bump(&mut metrics.limit_hits, "message_rate");
    ws.close(now, limits, CloseCode::POLICY_VIOLATION, "message rate exceeded");
}
