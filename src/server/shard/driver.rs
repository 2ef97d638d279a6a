//! The shard's two entry points and the dispatch under them.
//!
//! In: `on_wake` (the doorbell rang: commands from other threads, mesh messages,
//! completions of the connection ring, deferred reads) and `on_tick` (the timer tick:
//! messaging's tick, wheel deadlines, accept back-off, drain progress, metrics). Out:
//! each completion handed to its job (`accept`, `read`, `send`), each due deadline to
//! the connection's state, and at the end of every turn the messaging output, the dirty
//! connections flushed and the ring submitted. `ShardState::Finished` when a drain has
//! ended.
//!
//! Failures that could recur on every turn or for every bad client (`Noisy`) are
//! logged through one `RateLimit` per kind; the tick writes the `suppressed events`
//! summary.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{error, warn};

use crate::logging::RateLimit;
use crate::metrics::ShardMetrics;
use crate::proto::connection::Timeout;
use crate::server::ring::{BELL_DATA, Completion, NOOP_DATA};
use crate::slab::Key;

use super::handle::Command;
use super::slot::{Phase, raw, user_data};
use super::{
    ACCEPT_PLAIN, ACCEPT_TLS, COMPLETION_BATCH, KIND_ACCEPT, KIND_MASK, KIND_READ, KIND_WRITE, Shard, ShardState,
};

/// The shard's events that could otherwise write a line per turn or per bad client:
/// each kind is logged through its own [`RateLimit`] (`Shard::noisy`), at most
/// [`crate::logging::LOG_EVENTS_PER_SECOND`] a second; the metrics count every one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Noisy {
    /// An accept completed with an error (out of descriptors, ...): one per connection
    /// attempt while it lasts.
    Accept,
    /// Submitting to the connection ring failed: once per turn while it lasts.
    Submit,
    /// Flushing overflowed completions failed: once per drain of the ring.
    Flush,
}

impl Noisy {
    /// Every kind, in the order of `Shard::noisy`.
    pub(super) const ALL: [Noisy; 3] = [Noisy::Accept, Noisy::Submit, Noisy::Flush];

    /// The `kind` field of the summary line.
    fn name(self) -> &'static str {
        match self {
            Noisy::Accept => "accept",
            Noisy::Submit => "submit",
            Noisy::Flush => "flush",
        }
    }
}

/// One limit per [`Noisy`] kind, for `Shard::noisy`.
pub(super) fn noisy_limits() -> [RateLimit; Noisy::ALL.len()] {
    [RateLimit::per_shard(); Noisy::ALL.len()]
}

impl Shard {
    /// Whether an event of `kind` may be logged now; `false`: it is counted for the
    /// summary instead.
    pub(super) fn may_log(&mut self, kind: Noisy) -> bool {
        self.noisy[kind as usize].handle_event(self.now)
    }

    /// One `suppressed events` line per kind whose events were held back in a window
    /// that has ended.
    fn log_suppressed(&mut self) {
        for kind in Noisy::ALL {
            if let Some(suppressed) = self.noisy[kind as usize].poll_suppressed(self.now) {
                warn!(shard = self.id, kind = kind.name(), suppressed, "suppressed events");
            }
        }
    }

    /// Runs one turn after the doorbell rang: commands, completions, deferred reads,
    /// then writes.
    ///
    /// `bell_bytes` is what the wake-up read from the doorbell: the pair is re-armed only
    /// if it fired (see `server::ring`).
    pub fn on_wake(&mut self, bell_bytes: &[u8]) -> ShardState {
        self.now = Instant::now();
        self.ring.on_bell_bytes(bell_bytes);
        let commands = std::mem::take(&mut *self.handle.inbox.lock().unwrap_or_else(|e| e.into_inner()));
        for command in commands {
            match command {
                Command::Drain { code } => self.start_drain(code),
                Command::Api(request) => {
                    if let Some(msg) = self.msg.as_mut() {
                        msg.handle_api(*request, self.now);
                    }
                }
            }
        }
        self.recv_mesh();
        let again = std::mem::take(&mut self.again);
        for key in again {
            if self.slots.contains(key) {
                self.on_readable(key, true);
            }
        }
        self.drain_ring();
        self.end_turn()
    }

    /// Handles every completion the ring holds.
    pub(super) fn drain_ring(&mut self) {
        loop {
            self.completions.clear();
            if let Err(e) = self.ring.try_drain(&mut self.completions, COMPLETION_BATCH)
                && self.may_log(Noisy::Flush)
            {
                error!(shard = self.id, error = %e, "io_uring: flushing overflowed completions failed");
            }
            if self.completions.is_empty() {
                break;
            }
            for i in 0..self.completions.len() {
                let completion = self.completions[i];
                self.on_completion(completion);
            }
        }
    }

    /// Runs the timer tick: deadlines, drain progress, accept back-off, metrics. It also
    /// handles whatever the ring holds, so the shard makes progress every tick even if
    /// a wake-up were lost (belt and braces: the doorbell is re-armed on failure and
    /// overflowed completions are flushed, but a stalled shard is the worst failure a
    /// gateway can have).
    pub fn on_tick(&mut self) -> ShardState {
        self.now = Instant::now();
        self.handle.ticks.fetch_add(1, Ordering::Relaxed);
        self.recv_mesh();
        if let Some(msg) = self.msg.as_mut() {
            msg.handle_tick(self.now);
        }
        self.drain_ring();
        let now = self.now;
        self.fired.clear();
        self.wheel.advance(now, &mut self.fired);
        let fired = std::mem::take(&mut self.fired);
        for &(tick, key) in &fired {
            if self.slots.contains(key) && u64::from(self.slots[key].wheel_tick) == tick {
                self.slots[key].wheel_tick = 0;
                self.on_deadline(key);
                if self.slots.contains(key) {
                    self.schedule(key);
                }
            }
        }
        self.fired = fired;
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
            for which in [ACCEPT_PLAIN, ACCEPT_TLS] {
                if std::mem::take(&mut self.accept_paused[(which & 1) as usize]) {
                    self.arm_accept_on(which);
                }
            }
        }
        self.drain_step();
        self.publish_metrics();
        self.log_suppressed();
        self.end_turn()
    }

    pub(super) fn end_turn(&mut self) -> ShardState {
        self.flush_turn();
        if self.drain_done() {
            self.abort_all();
            // With `--redis`: the registry entries of what was just closed, and the
            // node leaving the live set, go out with the last batch.
            self.leave_cluster();
            self.publish_metrics();
            ShardState::Finished
        } else {
            ShardState::Running
        }
    }

    /// The output of a turn: messaging output into send queues, dirty connections
    /// flushed, the journal's writer signalled, the ring submitted.
    pub(super) fn flush_turn(&mut self) {
        self.flush_messaging();
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(slot) = self.slots.get_mut(key) {
                slot.dirty = false;
                self.flush(key);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
        if !self.again.is_empty() {
            // Deferred reads: come back after the executor has run other tasks.
            self.handle.bell.ring();
        }
        self.signal_journal();
        if let Err(e) = self.ring.submit()
            && self.may_log(Noisy::Submit)
        {
            error!(shard = self.id, error = %e, "io_uring submit failed");
        }
    }

    pub(super) fn live_slots(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn on_completion(&mut self, completion: Completion) {
        match completion.user_data {
            NOOP_DATA => return,
            BELL_DATA => {
                // The doorbell pair failed (its successes post nothing): without a new
                // one the shard would only wake on its tick.
                if completion.result != -libc::ECANCELED {
                    self.ring.arm_bell();
                }
                return;
            }
            _ => {}
        }
        match completion.user_data & KIND_MASK {
            KIND_ACCEPT => self.on_accept(completion),
            KIND_READ => {
                let key = Key::from_user_data(completion.user_data);
                if !self.slots.contains(key) {
                    return;
                }
                if completion.result < 0 && completion.result != -libc::ECANCELED {
                    self.release(key, true);
                    return;
                }
                if !completion.more {
                    // The kernel ended the multishot poll (it may, e.g. on overflow):
                    // arm it again.
                    let fd = raw(&self.slots[key].fd);
                    self.ring.poll_read_multi(fd, user_data(KIND_READ, key));
                }
                // The poll result is the ready mask. A hang-up or error must be read to the
                // end: io_uring coalesces wake-ups, so data and FIN arriving together give
                // one completion, and stopping at the short read of the data would leave
                // the EOF unseen until some later event.
                let hangup = (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) as i32;
                let to_end = completion.result > 0 && completion.result & hangup != 0;
                self.on_readable(key, to_end);
            }
            KIND_WRITE => {
                let key = Key::from_user_data(completion.user_data);
                if self.slots.contains(key) {
                    self.slots[key].write_armed = false;
                    self.flush(key);
                }
            }
            _ => {}
        }
    }

    /// The slot's earliest deadline (`None` for a stale key too).
    pub(super) fn deadline(&self, key: Key) -> Option<Instant> {
        let slot = self.slots.get(key)?;
        let io_deadline = slot.io.as_deref().and_then(|io| io.deadline);
        match slot.phase {
            Phase::Open => {
                let ws = slot.ws.poll_timeout(&self.cfg.limits);
                match (ws, io_deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Phase::Handshake | Phase::Closing | Phase::Linger => io_deadline,
        }
    }

    /// Puts the slot on the wheel if its deadline is earlier than the tick it waits
    /// for (later deadlines are found lazily when that tick fires).
    pub(super) fn schedule(&mut self, key: Key) {
        let Some(at) = self.deadline(key) else { return };
        let tick = self.wheel.tick_of(at);
        let slot = &self.slots[key];
        if slot.wheel_tick == 0 || tick < u64::from(slot.wheel_tick) {
            let used = self.wheel.schedule(at, key);
            self.slots[key].wheel_tick = used as u32;
        }
    }

    pub(super) fn on_deadline(&mut self, key: Key) {
        let now = self.now;
        let io_due = self.slots[key]
            .io
            .as_deref()
            .and_then(|io| io.deadline)
            .is_some_and(|d| now >= d);
        match self.slots[key].phase {
            Phase::Handshake => {
                if io_due {
                    let refused = self.slots[key].io.as_deref().is_some_and(|io| io.close_after_flush);
                    if !refused {
                        self.metrics.handshake_timeouts += 1;
                        ShardMetrics::bump(&mut self.metrics.handshake_failures, "handshake_timeout");
                        if self.slots[key].tls.as_deref().is_some_and(|tls| !tls.is_established()) {
                            ShardMetrics::bump(&mut self.metrics.tls_handshake_failures, "timeout");
                        }
                    }
                    self.release(key, !refused);
                }
            }
            Phase::Closing | Phase::Linger => {
                if io_due {
                    self.release(key, false);
                }
            }
            Phase::Open => match self.slots[key].ws.handle_timeout(now, &self.cfg.limits) {
                Some(Timeout::Heartbeat) => {
                    self.metrics.heartbeat_timeouts += 1;
                    self.after_protocol(key);
                }
                Some(Timeout::Close) => {
                    self.metrics.close_timeouts += 1;
                    self.release(key, true);
                }
                None => self.after_protocol(key),
            },
        }
    }

    pub(super) fn publish_metrics(&mut self) {
        self.metrics.connections = self.connections as u64;
        self.metrics.handshakes_in_progress = self.handshakes as u64;
        self.metrics.queued_bytes = self.queued_total as u64;
        self.metrics.watchdog_wakes = self.handle.watchdog_wakes.load(Ordering::Relaxed);
        self.metrics.commands_refused = self.handle.commands_refused();
        if let Some(stats) = &self.journal_stats {
            let stats = stats.borrow();
            let m = &mut self.metrics.journal;
            m.bytes_written = stats.bytes_written;
            m.writes = stats.writes;
            m.fsync_seconds.clone_from(&stats.fsync_seconds);
            m.write_errors = stats.write_errors;
            m.compactions = stats.compactions;
            m.segments = stats.segments;
            m.disk_bytes = stats.disk_bytes;
            m.full = u64::from(stats.full);
            m.recovered_records = stats.recovery.read.records;
            m.recovered_bytes = stats.recovery.read.bytes;
            m.recovery_cut_bytes = stats.recovery.read.cut_bytes;
            m.recovery_millis = stats.recovery.elapsed.as_millis() as u64;
        }
        if let Some(msg) = &self.msg {
            self.metrics.journal.held = msg.held() as u64;
            if let Some(journal) = msg.owner().store().journal() {
                self.metrics.journal.records_written = journal.encoder.records();
            }
            self.metrics.msg.clone_from(msg.metrics());
            self.metrics.msg.owner_entries = (msg.owner().users() + msg.owner().rooms()) as u64;
            self.metrics.msg_users = msg.hub().users() as u64;
            self.metrics.msg_rooms = msg.hub().rooms() as u64;
            self.metrics.msg_owned_users_online = msg.owner().online_users() as u64;
            self.metrics.msg_owned_rooms = msg.owner().occupied_rooms() as u64;
        }
        if let Some(mesh) = &self.mesh {
            self.metrics.mesh_pending = mesh.pending() as u64;
        }
        if let Some(io) = &self.cluster {
            let mut r = crate::cluster::RedisStats::default();
            for redis in io.redis() {
                r.merge(&redis.stats());
            }
            let c = self
                .msg
                .as_ref()
                .and_then(|m| m.cluster())
                .map(|c| c.stats())
                .unwrap_or_default();
            self.metrics.cluster = crate::metrics::ClusterMetrics {
                up: u64::from(io.redis().iter().all(crate::cluster::Redis::is_up)),
                round_trips: r.round_trips,
                commands: r.commands,
                reconnects: r.reconnects,
                connect_failures: r.connect_failures,
                errors: r.errors,
                timeouts: r.timeouts,
                refused: r.refused_unavailable + r.refused_full,
                pushes: r.pushes,
                unavailable: c.unavailable,
                requeued: c.requeued,
                cleaned: c.cleaned,
                error_replies: c.error_replies,
                early_dropped: c.early_dropped,
                live_nodes: c.live_nodes,
            };
            if let Some(cluster) = self.msg.as_ref().and_then(|m| m.cluster()) {
                self.metrics.msg_owned_users_online = cluster.users() as u64;
                self.metrics.msg_owned_rooms = cluster.rooms() as u64;
            }
        }
        #[cfg(test)]
        {
            self.metrics.test_heap_bytes = crate::testalloc::thread_live_bytes();
        }
        self.registry.publish(self.id, &self.metrics);
    }
}
