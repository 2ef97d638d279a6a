//! The part of a shard that other threads may touch: commands and the doorbell.
//!
//! In: `ShardHandle::send` from any thread (drain, a backend API request), the watchdog's `kick`. Out: commands the shard takes at the
//! start of its next turn (`Shard::on_wake`), and the counters the watchdog reads.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::task::Waker;

use crate::msg::api::ApiReply;
use crate::proto::close::CloseCode;
use crate::server::ring::Bell;

/// A command from another thread.
#[derive(Debug)]
pub enum Command {
    /// Stop accepting, close every connection with `code` spread over the drain window,
    /// and finish when all are closed or the drain deadline passes.
    Drain {
        /// 1001 (going away) or 1012 (service restart).
        code: CloseCode,
    },
    /// A backend API request from the admin thread (`crate::admin`, through
    /// [`ApiShards`](crate::server::ApiShards)): handed to messaging, whose owner answers on the
    /// request's channel. In echo mode it is dropped, which the admin side reports as
    /// 503.
    Api(Box<crate::msg::api::ApiRequest>),
}

/// Commands a shard's inbox holds between two turns. A turn takes them all, so only a
/// shard that does not run (stalled, or starved of CPU) fills it: backend API requests
/// arrive far below this in normal operation (an API burst of this size would also wait on the admin listener's cap).
pub const COMMAND_INBOX_CAPACITY: usize = 4096;

/// The part of a shard other threads may touch: its inbox and its bell.
#[derive(Debug)]
pub struct ShardHandle {
    /// Commands waiting for the shard's next turn: at most [`COMMAND_INBOX_CAPACITY`]
    /// (see [`ShardHandle::send`] for what happens beyond).
    pub(super) inbox: Mutex<Vec<Command>>,
    /// Commands refused because the inbox was full (`wsgate_shard_commands_refused_total`).
    pub(super) commands_refused: AtomicU64,
    pub(super) bell: Bell,
    /// Ticks the shard has run: the watchdog's sign of life (one relaxed store a tick).
    pub(super) ticks: AtomicU64,
    /// Times the watchdog found the shard asleep past its ticks and woke it.
    pub(super) watchdog_wakes: AtomicU64,
    /// The shard thread's kernel thread id (0 until it runs), for the watchdog to tell
    /// a shard that sleeps through its ticks from one that waits for a CPU.
    pub(super) tid: AtomicI32,
    /// The waker of the shard's ticker task, set by the shard while it runs. Waking it
    /// from another thread goes through glommio's own cross-thread path (the executor's
    /// eventfd, which its reactor always watches while parked), the one wake-up that
    /// reaches an executor parked with runnable tasks (see `server::watchdog`).
    pub(super) ticker: Mutex<Option<Waker>>,
}

impl ShardHandle {
    /// The handle of a shard woken by `bell`, with an empty inbox.
    pub(super) fn new(bell: Bell) -> Self {
        Self {
            inbox: Mutex::new(Vec::new()),
            commands_refused: AtomicU64::new(0),
            bell,
            ticks: AtomicU64::new(0),
            watchdog_wakes: AtomicU64::new(0),
            tid: AtomicI32::new(0),
            ticker: Mutex::new(None),
        }
    }

    /// Delivers `command` and wakes the shard; false if it was refused.
    ///
    /// The inbox holds at most [`COMMAND_INBOX_CAPACITY`] commands. Beyond, a
    /// [`Command::Api`] request is answered `overloaded` at once (the backend gets 503 and
    /// may retry), and counted. A [`Command::Drain`] is never refused: it is queued once however
    /// many signals ask for it (the first code wins, as `start_drain` keeps the first).
    pub fn send(&self, command: Command) -> bool {
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        let accepted = match command {
            Command::Drain { .. } if inbox.iter().any(|c| matches!(c, Command::Drain { .. })) => true,
            Command::Drain { .. } => {
                inbox.push(command);
                true
            }
            _ if inbox.len() >= COMMAND_INBOX_CAPACITY => {
                drop(inbox);
                self.commands_refused.fetch_add(1, Ordering::Relaxed);
                if let Command::Api(request) = command {
                    request.answer(ApiReply::Overloaded);
                }
                return false;
            }
            _ => {
                inbox.push(command);
                true
            }
        };
        drop(inbox);
        self.bell.ring();
        accepted
    }

    /// Commands refused so far because the inbox was full.
    pub fn commands_refused(&self) -> u64 {
        self.commands_refused.load(Ordering::Relaxed)
    }

    /// The shard's doorbell (the mesh rings it when they bring messages).
    pub fn bell(&self) -> Bell {
        self.bell.clone()
    }

    /// Ticks run so far.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Wakes a shard that has missed its ticks (see `server::watchdog`): wakes its
    /// ticker task from this thread, which glommio turns into a write to the
    /// executor's eventfd, and rings the doorbell.
    pub fn kick(&self) {
        self.watchdog_wakes.fetch_add(1, Ordering::Relaxed);
        if let Some(waker) = &*self.ticker.lock().unwrap_or_else(|e| e.into_inner()) {
            waker.wake_by_ref();
        }
        self.bell.ring();
    }

    /// Times the watchdog woke this shard.
    pub fn watchdog_wakes(&self) -> u64 {
        self.watchdog_wakes.load(Ordering::Relaxed)
    }

    /// Rings the doorbell, as a completion of the connection ring would.
    #[cfg(test)]
    pub(crate) fn ring_for_test(&self) {
        self.bell.ring();
    }

    /// The shard thread's kernel thread id while its tasks run (not before it starts,
    /// not after it finishes).
    pub fn tid(&self) -> Option<i32> {
        Some(self.tid.load(Ordering::Relaxed)).filter(|&tid| tid > 0)
    }

    /// Called on the shard's thread when it starts running.
    pub(crate) fn set_tid(&self, tid: i32) {
        self.tid.store(tid, Ordering::Relaxed);
    }

    /// Keeps `waker` (the ticker task's) for [`ShardHandle::kick`]. Called on the
    /// shard's thread.
    pub(crate) fn set_ticker_waker(&self, waker: &Waker) {
        let mut slot = self.ticker.lock().unwrap_or_else(|e| e.into_inner());
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    /// Marks the shard finished and drops the ticker's waker. Called on the shard's
    /// thread before its executor ends, so that no other thread wakes, or drops, a task
    /// of a finished executor.
    pub(crate) fn finish(&self) {
        let waker = self.ticker.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(waker);
        self.tid.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;

    use super::*;
    use crate::msg::api::{ApiOp, ApiRequest};
    use crate::server::ring::ConnRing;

    fn handle() -> ShardHandle {
        let (ring, _rx) = ConnRing::new(4, 8).expect("io_uring");
        ShardHandle::new(ring.bell())
    }

    #[test]
    fn a_full_inbox_answers_api_requests_overloaded_but_never_refuses_a_drain() {
        let handle = handle();
        let request = |user: &str| {
            let (reply, answer) = sync_channel(1);
            let op = ApiOp::PresenceUser { user: user.into() };
            (ApiRequest { op, reply }, answer)
        };
        let mut waiting = Vec::new();
        for i in 0..COMMAND_INBOX_CAPACITY {
            let (request, answer) = request(&format!("u{i}"));
            assert!(handle.send(Command::Api(Box::new(request))));
            waiting.push(answer);
        }
        assert!(
            waiting.iter().all(|answer| answer.try_recv().is_err()),
            "queued, not answered"
        );
        let (request, answer) = request("alice");
        assert!(!handle.send(Command::Api(Box::new(request))));
        assert_eq!(answer.try_recv(), Ok(ApiReply::Overloaded));
        assert_eq!(handle.commands_refused(), 1);
        // Drains get in however full the inbox is, and only once.
        for code in [CloseCode::GOING_AWAY, CloseCode::SERVICE_RESTART, CloseCode::GOING_AWAY] {
            assert!(handle.send(Command::Drain { code }));
        }
        let inbox = handle.inbox.lock().unwrap();
        assert_eq!(inbox.len(), COMMAND_INBOX_CAPACITY + 1);
        assert!(matches!(
            inbox.last(),
            Some(Command::Drain {
                code: CloseCode::GOING_AWAY
            })
        ));
        assert_eq!(handle.commands_refused(), 1);
    }
}
