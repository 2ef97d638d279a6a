//! Ending connections: leaving the open set, linger, freeing a slot, drain.
//!
//! In: a finished WebSocket (close handshake done, failed or timed out), EOF, or
//! `Command::Drain`. Out: the connection's share of the edge limits and its messaging
//! state given back, a write
//! shutdown and a linger for the peer's EOF, then the socket closed and the slot's
//! generation bumped so no late completion reaches its next owner. A drain sends close
//! frames to the open connections in random order spread over the drain window, and the
//! shards of a server finish together ([`DrainGroup`]).

use std::net::Shutdown;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::proto::close::CloseCode;
use crate::slab::Key;

use super::slot::{Phase, sock, user_data};
use super::{ACCEPT_PLAIN, ACCEPT_TLS, KIND_READ, KIND_WRITE, Shard};

/// Drain progress.
#[derive(Debug)]
pub(super) struct Drain {
    /// The close code sent to clients.
    pub(super) code: CloseCode,
    /// When the drain began.
    pub(super) started: Instant,
    /// Open connections at the start, in random order: closed progressively over the
    /// drain window so clients do not all reconnect at once.
    pub(super) order: Vec<Key>,
    /// How many of `order` have been sent a close.
    pub(super) next: usize,
    /// This shard's connections are all gone and it told the [`DrainGroup`] so.
    pub(super) emptied: bool,
}

/// The shards of one server drain as one: a shard whose own connections are all closed
/// keeps running until every shard's are (or its drain deadline passes), because it is
/// still the owner of its share of users and rooms, and the connections the other shards
/// still hold send to them. A shard that left early would leave what they route to it
/// unanswered for the rest of the window (lost on a ring nobody reads, or, once the
/// shard is gone, shed as `overloaded`): a message typed during a restart could use up
/// its client's tries and fail instead of being stored.
#[derive(Debug)]
pub struct DrainGroup {
    /// Shards that still hold connections (or have not started draining).
    holding: AtomicUsize,
}

impl DrainGroup {
    /// A group of `shards` shards, none of them drained yet.
    pub fn new(shards: usize) -> Self {
        Self {
            holding: AtomicUsize::new(shards),
        }
    }

    /// One shard's connections are all closed (call once per shard).
    fn emptied(&self) {
        let before = self.holding.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "more shards emptied than the group holds");
    }

    /// Every shard's connections are closed.
    pub fn all_empty(&self) -> bool {
        self.holding.load(Ordering::Acquire) == 0
    }
}

impl Shard {
    /// Counts a connection out of the open set (once).
    pub(super) fn leave_open(&mut self, key: Key) {
        let slot = &mut self.slots[key];
        if slot.phase == Phase::Open {
            slot.phase = Phase::Closing;
            self.connections -= 1;
            self.metrics.closed += 1;
            self.forget_peer(key);
        }
    }

    /// Gives the connection's share of the per-address limits and its messaging state
    /// back (its user's owner counts it out of the per-user limit).
    pub(super) fn forget_peer(&mut self, key: Key) {
        if let Some(msg) = self.msg.as_mut() {
            msg.handle_disconnect(key, self.now);
        }
        self.edge.release_ip(std::mem::take(&mut self.slots[key].ip));
    }

    /// Our side is done: shut down writing so the peer sees our last bytes and an EOF,
    /// then wait (up to the close timeout) for the peer to close its side.
    pub(super) fn start_linger(&mut self, key: Key) {
        let slot = &mut self.slots[key];
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
        self.schedule(key);
    }

    /// Frees the slot: stops the polls, closes the socket, drops queued output. Nothing
    /// happens if `key` is stale (the slot is free already).
    pub(super) fn release(&mut self, key: Key, abnormal: bool) {
        let Some(slot) = self.slots.get(key) else { return };
        match slot.phase {
            Phase::Handshake => self.handshakes -= 1,
            Phase::Open => {
                self.connections -= 1;
                self.metrics.closed += 1;
                self.forget_peer(key);
            }
            Phase::Closing | Phase::Linger => {}
        }
        if abnormal {
            self.metrics.abnormal_closes += 1;
        }
        // The slab bumps the slot's generation: no late completion, wheel entry or
        // messaging output for this connection reaches the slot's next one.
        let slot = self.slots.remove(key).expect("checked above");
        self.ring.poll_remove(user_data(KIND_READ, key));
        if slot.write_armed {
            self.ring.poll_remove(user_data(KIND_WRITE, key));
        }
        if let Some(io) = &slot.io {
            self.queued_total -= io.queued_bytes;
        }
        if slot.tls.is_some() {
            self.metrics.tls_sessions -= 1;
        }
        // Dropping the slot closes the socket; the pending polls hold their own file
        // references until the removals above complete.
        drop(slot);
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
        let mut order: Vec<Key> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.phase == Phase::Open)
            .map(|(key, _)| key)
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
            emptied: false,
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
            let key = self.drain.as_ref().expect("draining").order[i];
            if self.slots.contains(key) && self.slots[key].phase == Phase::Open {
                self.slots[key]
                    .ws
                    .close(self.now, &self.cfg.limits, code, "server draining");
                self.after_protocol(key);
            }
        }
        if let Some(drain) = self.drain.as_mut() {
            drain.next = due.max(drain.next);
        }
    }

    /// Whether the drain is over for this shard: every shard of the server has closed its
    /// connections, or this shard's deadline passed. Tells the group (once) when this
    /// shard's own connections are gone; new ones are not accepted while draining, so
    /// the count only falls.
    pub(super) fn drain_done(&mut self) -> bool {
        let empty = self.live_slots() == 0;
        let Some(drain) = self.drain.as_mut() else { return false };
        if empty && !drain.emptied {
            drain.emptied = true;
            self.drain_group.emptied();
        }
        self.drain_group.all_empty() || self.now >= drain.started + self.cfg.drain_timeout
    }

    /// The drain deadline passed (or the shard is finished): close every socket left.
    pub(super) fn abort_all(&mut self) {
        let keys: Vec<Key> = self.slots.keys().collect();
        for key in keys {
            self.release(key, true);
        }
        let _ = self.ring.submit();
    }
}
