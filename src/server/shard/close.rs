//! Ending connections: leaving the open set, eviction, linger, freeing a slot, drain.
//!
//! In: a finished WebSocket (close handshake done, failed or timed out), an eviction by
//! the per-user limit (from this or another shard), EOF, or `Command::Drain`. Out: the
//! connection's share of the edge limits and its messaging state given back, a write
//! shutdown and a linger for the peer's EOF, then the socket closed and the slot's
//! generation bumped so no late completion reaches its next owner. A drain sends close
//! frames to the open connections in random order spread over the drain window.

use std::net::Shutdown;
use std::time::Instant;

use crate::edge::ConnRef;
use crate::proto::close::CloseCode;
use crate::proto::connection::Connection;
use crate::proto::frame::Role;
use crate::server::wheel::Entry;

use super::handle::Command;
use super::slot::{Phase, conn_of, sock, user_data};
use super::{ACCEPT_PLAIN, ACCEPT_TLS, GEN_MASK, KIND_READ, KIND_WRITE, Shard};

/// Drain progress.
#[derive(Debug)]
pub(super) struct Drain {
    /// The close code sent to clients.
    pub(super) code: CloseCode,
    /// When the drain began.
    pub(super) started: Instant,
    /// Open connections at the start, in random order: closed progressively over the
    /// drain window so clients do not all reconnect at once.
    pub(super) order: Vec<Entry>,
    /// How many of `order` have been sent a close.
    pub(super) next: usize,
}

impl Shard {
    /// Counts a connection out of the open set (once).
    pub(super) fn leave_open(&mut self, entry: Entry) {
        let slot = &mut self.slots[entry.slot as usize];
        if slot.phase == Phase::Open {
            slot.phase = Phase::Closing;
            self.connections -= 1;
            self.metrics.closed += 1;
            self.forget_peer(entry);
        }
    }

    /// Gives the connection's share of the per-address and per-user limits back.
    pub(super) fn forget_peer(&mut self, entry: Entry) {
        if let Some(msg) = self.msg.as_mut() {
            msg.handle_disconnect(conn_of(entry), self.now);
        }
        let slot = &mut self.slots[entry.slot as usize];
        self.edge.release_ip(std::mem::take(&mut slot.ip));
        let user = std::mem::take(&mut slot.user);
        let conn = ConnRef {
            shard: self.id as u32,
            slot: entry.slot,
            gen_: entry.gen_,
        };
        self.edge.release_user(user, conn);
    }

    /// Closes a connection the per-user limit evicted, on whichever shard holds it.
    pub(super) fn evict_anywhere(&mut self, victim: ConnRef) {
        let entry = Entry {
            slot: victim.slot,
            gen_: victim.gen_,
        };
        if victim.shard as usize == self.id {
            self.evict(entry);
        } else if let Some(peer) = self.peers.get().and_then(|peers| peers.get(victim.shard as usize)) {
            peer.send(Command::Kick {
                slot: victim.slot,
                gen_: victim.gen_,
            });
        }
    }

    /// Closes `entry` with 1008 because a newer connection of its user replaced it.
    pub(super) fn evict(&mut self, entry: Entry) {
        if !self.valid(entry) || self.slots[entry.slot as usize].phase != Phase::Open {
            return;
        }
        self.slots[entry.slot as usize].ws.close(
            self.now,
            &self.cfg.limits,
            CloseCode::POLICY_VIOLATION,
            "replaced by a newer connection",
        );
        self.after_protocol(entry);
    }

    /// Our side is done: shut down writing so the peer sees our last bytes and an EOF,
    /// then wait (up to the close timeout) for the peer to close its side.
    pub(super) fn start_linger(&mut self, entry: Entry) {
        let index = entry.slot as usize;
        let slot = &mut self.slots[index];
        if slot.phase == Phase::Handshake {
            self.handshakes -= 1;
        }
        slot.phase = Phase::Linger;
        // A failure means the peer is gone already: the linger then ends at EOF or its
        // deadline all the same.
        let _ = sock(&slot.fd).shutdown(Shutdown::Write);
        let io = slot.io.get_or_insert_with(Box::default);
        io.close_after_flush = false;
        io.deadline = Some(self.now + self.cfg.limits.close_timeout);
        self.schedule(entry);
    }

    /// Frees the slot: stops the polls, closes the socket, drops queued output.
    pub(super) fn release(&mut self, entry: Entry, abnormal: bool) {
        let index = entry.slot as usize;
        let slot = &mut self.slots[index];
        match slot.phase {
            Phase::Free => return,
            Phase::Handshake => self.handshakes -= 1,
            Phase::Open => {
                self.connections -= 1;
                self.metrics.closed += 1;
                self.forget_peer(entry);
            }
            Phase::Closing | Phase::Linger => {}
        }
        let slot = &mut self.slots[index];
        if abnormal {
            self.metrics.abnormal_closes += 1;
        }
        self.ring.poll_remove(user_data(KIND_READ, entry));
        if slot.write_armed {
            self.ring.poll_remove(user_data(KIND_WRITE, entry));
        }
        // Closes the socket; the pending polls hold their own file references until the
        // removals above complete.
        drop(slot.fd.take());
        if let Some(io) = slot.io.take() {
            self.queued_total -= io.queued_bytes;
        }
        if slot.tls.take().is_some() {
            self.metrics.tls_sessions -= 1;
        }
        slot.phase = Phase::Free;
        slot.write_armed = false;
        slot.dirty = false;
        slot.peer_closed = false;
        slot.tat = 0;
        slot.wheel_tick = 0;
        slot.gen_ = (slot.gen_ + 1) & GEN_MASK;
        slot.ws = Connection::new(Role::Server, self.now);
        self.free.push(entry.slot);
    }

    pub(super) fn start_drain(&mut self, code: CloseCode) {
        if self.drain.is_some() {
            return;
        }
        if let Some(listener) = self.listener.take() {
            self.ring.cancel(ACCEPT_PLAIN);
            drop(listener);
        }
        if let Some(listener) = self.tls_listener.take() {
            self.ring.cancel(ACCEPT_TLS);
            drop(listener);
        }
        let mut order: Vec<Entry> = (0..self.slots.len() as u32)
            .filter(|&i| self.slots[i as usize].phase == Phase::Open)
            .map(|i| self.entry(i))
            .collect();
        // Fisher-Yates with xorshift: which client goes first does not matter, only
        // that reconnects spread out.
        for i in (1..order.len()).rev() {
            let j = (self.next_random() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        self.drain = Some(Drain {
            code,
            started: self.now,
            order,
            next: 0,
        });
        self.drain_step();
    }

    pub(super) fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Sends close frames to the share of connections whose turn has come.
    pub(super) fn drain_step(&mut self) {
        let Some(drain) = &self.drain else { return };
        let window = self.cfg.drain_window.as_secs_f64();
        let elapsed = self.now.saturating_duration_since(drain.started).as_secs_f64();
        let share = if window <= 0.0 {
            1.0
        } else {
            (elapsed / window).min(1.0)
        };
        let due = ((drain.order.len() as f64) * share).ceil() as usize;
        let (code, from) = (drain.code, drain.next);
        for i in from..due {
            let entry = self.drain.as_ref().expect("draining").order[i];
            if self.valid(entry) && self.slots[entry.slot as usize].phase == Phase::Open {
                self.slots[entry.slot as usize]
                    .ws
                    .close(self.now, &self.cfg.limits, code, "server draining");
                self.after_protocol(entry);
            }
        }
        if let Some(drain) = self.drain.as_mut() {
            drain.next = due.max(drain.next);
        }
    }

    /// The drain deadline passed (or the shard is finished): close every socket left.
    pub(super) fn abort_all(&mut self) {
        for i in 0..self.slots.len() as u32 {
            let entry = self.entry(i);
            if self.valid(entry) {
                self.release(entry, true);
            }
        }
        let _ = self.ring.submit();
    }
}
