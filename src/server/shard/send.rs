//! Send queues, the slow-consumer policy and flushing.
//!
//! In: output for a connection (a shared frame or raw response bytes), control or data.
//! Out: the queue written with one `sendmsg` per connection per turn (plain), or sealed
//! into TLS records and written (TLS); a write poll armed when the socket is full; data
//! beyond the connection's cap or the shard's budget closing the connection as a slow
//! consumer (queued data dropped, close 1008).

use std::io::{self, ErrorKind, IoSlice};

use crate::proto::close::CloseCode;
use crate::slab::Key;

use super::slot::{Io, Out, raw, sock, user_data};
use super::{IOV_BATCH, KIND_WRITE, SEND_FLAGS, Shard, TLS_SEAL_BATCH_BYTES};

impl Shard {
    pub(super) fn mark_dirty(&mut self, key: Key) {
        let slot = &mut self.slots[key];
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Queues output. Data beyond the connection's cap (or the shard's budget) invokes
    /// the slow-consumer policy; control output (handshake responses, pong, ping,
    /// close) is never refused, and it is bounded by the protocol (one of each at a
    /// time).
    pub(super) fn enqueue(&mut self, key: Key, out: Out, control: bool) {
        let len = out.as_bytes().len();
        let io = self.slots[key].io.get_or_insert_with(Box::default);
        // `send_queue_bytes` bounds the backlog behind the frame being written, not the
        // frame itself: a reader that keeps up always receives a message of the
        // largest size (`max_message_bytes`, or a room message), whatever the cap.
        let head = io.queue.front().map_or(0, |o| o.as_bytes().len());
        let backlog = io.queued_bytes - head;
        if !control
            && ((!io.queue.is_empty() && backlog + len > self.cfg.send_queue_bytes)
                || self.queued_total + len > self.cfg.shard_send_budget_bytes)
        {
            self.slow_consumer(key);
            return;
        }
        io.queue.push_back(out);
        io.queued_bytes += len;
        self.queued_total += len;
        self.mark_dirty(key);
    }

    /// The slow-consumer policy: the client does not read what it is sent. Drop its
    /// queued data (all but a frame already partly written, which must be finished to
    /// keep the stream intact), send close 1008 "slow consumer", and give the close
    /// frame the close timeout to get out; then the socket is closed.
    pub(super) fn slow_consumer(&mut self, key: Key) {
        self.metrics.slow_consumer_closes += 1;
        let slot = &mut self.slots[key];
        if let Some(io) = slot.io.as_deref_mut() {
            let keep = usize::from(io.head_written > 0);
            for out in io.queue.drain(keep..) {
                let len = out.as_bytes().len();
                io.queued_bytes -= len;
                self.queued_total -= len;
            }
        }
        slot.ws
            .close(self.now, &self.cfg.limits, CloseCode::POLICY_VIOLATION, "slow consumer");
        self.after_protocol(key);
    }

    /// Writes as much of the queue as the socket takes, many frames per syscall.
    pub(super) fn flush(&mut self, key: Key) {
        if self.slots[key].write_armed {
            return;
        }
        if self.slots[key].tls.is_some() {
            self.flush_tls(key);
            return;
        }
        loop {
            let slot = &mut self.slots[key];
            let Some(io) = slot.io.as_deref_mut() else { return };
            if io.queue.is_empty() {
                break;
            }
            let mut iov = [IoSlice::new(&[]); IOV_BATCH];
            let mut count = 0;
            let mut total = 0;
            for (i, out) in io.queue.iter().take(IOV_BATCH).enumerate() {
                let bytes = if i == 0 {
                    &out.as_bytes()[io.head_written..]
                } else {
                    out.as_bytes()
                };
                iov[i] = IoSlice::new(bytes);
                count += 1;
                total += bytes.len();
            }
            let sent = match sock(&slot.fd).send_vectored_with_flags(&iov[..count], SEND_FLAGS) {
                Ok(sent) => sent,
                Err(error) => {
                    if self.send_failed(key, &error) {
                        continue;
                    }
                    return;
                }
            };
            let mut left = sent;
            self.metrics.bytes_out += left as u64;
            while left > 0 {
                let head = io
                    .queue
                    .front()
                    .expect("bytes were sent from the queue")
                    .as_bytes()
                    .len();
                let rest = head - io.head_written;
                if left >= rest {
                    left -= rest;
                    let out = io.queue.pop_front().expect("checked above");
                    if matches!(out, Out::Frame(_)) {
                        self.metrics.frames_out += 1;
                    }
                    io.queued_bytes -= head;
                    self.queued_total -= head;
                    io.head_written = 0;
                } else {
                    io.head_written += left;
                    left = 0;
                }
            }
            if sent < total {
                self.wait_writable(key);
                return;
            }
        }
        self.after_flush(key);
    }

    /// Everything queued is out: finish a closing connection, or free an empty `Io`.
    pub(super) fn after_flush(&mut self, key: Key) {
        let slot = &mut self.slots[key];
        let finished = slot.io.as_deref().is_some_and(|io| io.close_after_flush);
        if finished && slot.peer_closed {
            self.release(key, false);
        } else if finished {
            self.start_linger(key);
        } else if slot.io.as_deref().is_some_and(Io::is_empty) {
            slot.io = None;
        }
    }

    /// [`Self::flush`] for a TLS connection: queued plaintext is sealed in batches into
    /// the session's output (which exists only while it holds ciphertext) and written
    /// from there; close_notify follows the last record of a finished connection.
    pub(super) fn flush_tls(&mut self, key: Key) {
        loop {
            let slot = &mut self.slots[key];
            let tls = slot.tls.as_deref_mut().expect("a TLS slot");
            if let Some(io) = slot.io.as_deref_mut()
                && tls.is_established()
                && !tls.close_sent()
                && tls.poll_transmit().len() < TLS_SEAL_BATCH_BYTES
            {
                self.seal_buf.clear();
                while let Some(out) = io.queue.front() {
                    let len = out.as_bytes().len();
                    if !self.seal_buf.is_empty() && self.seal_buf.len() + len > TLS_SEAL_BATCH_BYTES {
                        break;
                    }
                    self.seal_buf.extend_from_slice(out.as_bytes());
                    let out = io.queue.pop_front().expect("peeked above");
                    if matches!(out, Out::Frame(_)) {
                        self.metrics.frames_out += 1;
                    }
                    io.queued_bytes -= len;
                    self.queued_total -= len;
                }
                if !self.seal_buf.is_empty() && tls.seal(&self.seal_buf).is_err() {
                    self.release(key, true);
                    return;
                }
                if self.seal_buf.capacity() > 4 * TLS_SEAL_BATCH_BYTES {
                    // One huge message passed through: do not keep its buffer.
                    self.seal_buf = Vec::new();
                }
                if io.queue.is_empty() && io.close_after_flush && tls.poll_transmit().len() < TLS_SEAL_BATCH_BYTES {
                    tls.close();
                }
            }
            let pending = tls.poll_transmit();
            if pending.is_empty() {
                break;
            }
            let sent = match sock(&slot.fd).send_with_flags(pending, SEND_FLAGS) {
                Ok(sent) => sent,
                Err(error) => {
                    if self.send_failed(key, &error) {
                        continue;
                    }
                    return;
                }
            };
            let short = sent < pending.len();
            tls.consume_transmit(sent);
            self.metrics.bytes_out += sent as u64;
            if short {
                self.wait_writable(key);
                return;
            }
        }
        let queued = self.slots[key].io.as_deref().is_some_and(|io| !io.queue.is_empty());
        if queued {
            // Not sealable (the handshake is still running): wait for it.
            return;
        }
        self.after_flush(key);
    }

    /// After a failed send: waits for writability when the socket is full, asks for a
    /// retry when interrupted (true), ends the connection on anything else.
    pub(super) fn send_failed(&mut self, key: Key, error: &io::Error) -> bool {
        match error.kind() {
            ErrorKind::WouldBlock => {
                self.wait_writable(key);
                false
            }
            ErrorKind::Interrupted => true,
            _ => {
                self.release(key, true);
                false
            }
        }
    }

    /// The socket took less than it was offered: flush again once it is writable.
    pub(super) fn wait_writable(&mut self, key: Key) {
        let slot = &mut self.slots[key];
        slot.write_armed = true;
        self.ring.poll_write_once(raw(&slot.fd), user_data(KIND_WRITE, key));
    }
}
