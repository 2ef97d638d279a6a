//! Reading sockets into the shard's one read buffer.
//!
//! In: a readable socket (a poll completion or a deferred read). Out: bytes in the shard
//! buffer handed to the upgrade (`upgrade`) or the frame code (`frames`) by the slot's
//! phase; for TLS, ciphertext decrypted by the session and its plaintext taking the
//! same path; EOF and read errors ending the connection (`close`). A connection reads
//! at most `READ_BUDGET_BYTES` per turn; the rest waits for the next turn.

use std::io::{ErrorKind, Read};

use crate::metrics::ShardMetrics;
use crate::slab::Key;

use super::slot::{Phase, sock};
use super::{READ_BUDGET_BYTES, Shard};

impl Shard {
    /// Reads what the socket has. A short read normally means the socket is drained;
    /// with `to_end` (the poll saw a hang-up) reading goes on until EOF or EAGAIN.
    pub(super) fn on_readable(&mut self, key: Key, to_end: bool) {
        if self.slots[key].tls.is_some() {
            self.on_tls_readable(key, to_end);
            return;
        }
        let mut budget = READ_BUDGET_BYTES;
        loop {
            // The socket is non-blocking (accepted with SOCK_NONBLOCK).
            let n = match (&*sock(&self.slots[key].fd)).read(&mut self.buf) {
                Ok(0) => {
                    self.on_eof(key);
                    return;
                }
                Ok(n) => n,
                Err(e) => match e.kind() {
                    ErrorKind::WouldBlock => return,
                    ErrorKind::Interrupted => continue,
                    _ => {
                        self.on_eof(key);
                        return;
                    }
                },
            };
            self.metrics.bytes_in += n as u64;
            match self.slots[key].phase {
                Phase::Handshake => self.on_request_bytes(key, n),
                Phase::Open => self.on_frame_bytes(key, 0, n),
                Phase::Closing | Phase::Linger => {}
            }
            if !self.slots.contains(key) || (n < self.buf.len() && !to_end) {
                return;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                self.again.push(key);
                return;
            }
        }
    }

    /// Reads a TLS connection: ciphertext lands in `buf` behind the unfinished record
    /// kept from the last read, the session decrypts it, and the plaintext goes through
    /// the same handshake and frame code as a plain connection's bytes (by swapping it
    /// into `buf`).
    pub(super) fn on_tls_readable(&mut self, key: Key, to_end: bool) {
        let mut budget = READ_BUDGET_BYTES;
        loop {
            let slot = &mut self.slots[key];
            let tls = slot.tls.as_deref_mut().expect("a TLS slot");
            let kept = tls.partial_len();
            let room = self.buf.len() - kept;
            if room == 0 {
                // Unfinished input fills the whole read buffer: a handshake message
                // spread over many records that no real client sends (a ClientHello is
                // a few KB). Refuse it rather than read 0 bytes and call it EOF.
                ShardMetrics::bump(&mut self.metrics.tls_handshake_failures, "too_large");
                tls.abandon();
                self.tls_failed(key);
                continue;
            }
            // Behind the kept bytes of an unfinished record, within the buffer.
            let read = (&*sock(&slot.fd)).read(&mut self.buf[kept..]);
            let n = match read {
                Ok(n) if n > 0 => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Ok(_) | Err(_) => {
                    if !tls.is_established() && slot.phase == Phase::Handshake {
                        ShardMetrics::bump(&mut self.metrics.tls_handshake_failures, "eof");
                    }
                    self.on_eof(key);
                    return;
                }
            };
            self.metrics.bytes_in += n as u64;
            if tls.is_failed() {
                // Only the alert and the linger are left: input is discarded.
                if n < room && !to_end {
                    return;
                }
                budget = budget.saturating_sub(n);
                if budget == 0 {
                    self.again.push(key);
                    return;
                }
                continue;
            }
            tls.take_partial(&mut self.buf);
            self.plain.clear();
            let was_established = tls.is_established();
            let result = tls.handle_ciphertext(&mut self.buf[..kept + n], &mut self.plain);
            if tls.wants_transmit() {
                self.mark_dirty(key);
            }
            let input = match result {
                Ok(input) => input,
                Err(error) => {
                    let label = if was_established {
                        "after_handshake"
                    } else {
                        error.label()
                    };
                    ShardMetrics::bump(&mut self.metrics.tls_handshake_failures, label);
                    self.tls_failed(key);
                    return;
                }
            };
            if let Some(info) = input.handshake_done {
                ShardMetrics::bump(&mut self.metrics.tls_handshakes, info.version);
                self.metrics.tls_resumed += u64::from(info.resumed);
            }
            let plain = self.plain.len();
            if plain > 0 {
                std::mem::swap(&mut self.buf, &mut self.plain);
                match self.slots[key].phase {
                    Phase::Handshake => self.on_request_bytes(key, plain),
                    Phase::Open => self.on_frame_bytes(key, 0, plain),
                    Phase::Closing | Phase::Linger => {}
                }
                std::mem::swap(&mut self.buf, &mut self.plain);
            }
            if !self.slots.contains(key) {
                return;
            }
            if input.peer_closed {
                // close_notify: the peer sends nothing more, as with a FIN.
                self.on_eof(key);
                return;
            }
            if n < room && !to_end {
                return;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                self.again.push(key);
                return;
            }
        }
    }

    /// The TLS session failed: drop queued data, send rustls' alert (if any), then
    /// close like a refused handshake (linger for the peer's EOF, up to the close
    /// timeout).
    pub(super) fn tls_failed(&mut self, key: Key) {
        self.leave_open(key);
        let close_timeout = self.cfg.limits.close_timeout;
        let now = self.now;
        let slot = &mut self.slots[key];
        let io = slot.io.get_or_insert_with(Box::default);
        for out in io.queue.drain(..) {
            let len = out.as_bytes().len();
            self.queued_total -= len;
        }
        io.queued_bytes = 0;
        io.head_written = 0;
        io.request = Vec::new();
        io.close_after_flush = true;
        io.deadline = Some(now + close_timeout);
        self.mark_dirty(key);
        self.schedule(key);
    }

    pub(super) fn on_eof(&mut self, key: Key) {
        let Some(slot) = self.slots.get_mut(key) else { return };
        let abnormal = match slot.phase {
            Phase::Open => !slot.ws.handle_eof(),
            Phase::Handshake | Phase::Closing => true,
            Phase::Linger => false,
        };
        self.release(key, abnormal);
    }
}
