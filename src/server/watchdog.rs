//! Wakes a shard that slept through its ticks.
//!
//! glommio 0.9 can park an executor that still has runnable tasks (its preemption timer
//! expired before the run loop ran any task; see the module docs of `server`). When
//! both shard tasks are runnable the park waits for nothing: no timer, no read on the
//! doorbell, so the shard sits in `io_uring_enter` for good while its sockets wait (5
//! of 124 shards in the second million-connection run). The shards' one-hour
//! preemption timer removes that trigger; this thread is the net under it.
//!
//! Every tick it checks each shard's tick counter. A shard whose counter has not moved
//! for [`STALL_TICKS`] ticks and whose thread *sleeps* (`S` in `/proc`) is woken through
//! its ticker task's `Waker`: glommio sends a wake from another thread to the owning
//! executor's eventfd, whose read its reactor keeps armed whenever it parks, so this
//! reaches even a park that waits for nothing else; the doorbell is rung too. A
//! doorbell byte alone did not: nobody polls the socketpair while the waker task is
//! runnable. A shard that is runnable (`R`, waiting for a CPU) is left alone; it ticks
//! when it gets one. So `wsgate_shard_watchdog_wakes_total` counts only real rescues.
//! It does not stay 0 under heavy CPU contention (the million and fan-out runs in the
//! README): glommio still parks a shard with work by a path other than the expired
//! preemption timer, not found yet, and this watchdog is what bounds such a stall.
//!
//! Tested end to end by `tests::a_shard_sleeping_through_its_ticks_is_woken_by_the_watchdog_and_serves_again`
//! (a shard whose ticker lost its wake-up, in the default suite) and, under the real
//! trigger, by the ignored stress test `tests::shards_parked_with_runnable_tasks_are_woken`.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::shard::ShardHandle;

/// Ticks a shard may miss before it is woken. Waking a shard that was only busy is
/// harmless (a spurious wake of its ticker, one spare byte on its doorbell), so this is
/// short: a stalled shard loses about three ticks (300 ms by default).
pub const STALL_TICKS: u32 = 3;

/// What the watchdog remembers of one shard between checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// The tick counter at the last check.
    pub ticks: u64,
    /// Consecutive checks that found it unchanged.
    pub unchanged: u32,
}

/// One check: updates `seen` from the shards' tick counters and returns the shards to
/// wake. With checks every tick, a shard is woken after `STALL_TICKS` silent checks,
/// then again every `STALL_TICKS` checks while it stays silent.
pub fn check(seen: &mut [Seen], ticks: &[u64]) -> Vec<usize> {
    debug_assert_eq!(seen.len(), ticks.len());
    let mut wake = Vec::new();
    for (i, (s, &t)) in seen.iter_mut().zip(ticks).enumerate() {
        if t != s.ticks {
            *s = Seen { ticks: t, unchanged: 0 };
            continue;
        }
        s.unchanged += 1;
        if s.unchanged.is_multiple_of(STALL_TICKS) {
            wake.push(i);
        }
    }
    wake
}

/// Starts the watchdog over `shards`, checking every `tick`, until `stop` is set.
pub fn spawn(shards: Vec<Arc<ShardHandle>>, tick: Duration, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("wsgate-watchdog".into())
        .spawn(move || {
            let mut seen = vec![Seen::default(); shards.len()];
            let mut logged = vec![false; shards.len()];
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(tick);
                let ticks: Vec<u64> = shards.iter().map(|s| s.ticks()).collect();
                for shard in check(&mut seen, &ticks) {
                    let Some(tid) = shards[shard].tid() else {
                        // Not running yet, or finished.
                        continue;
                    };
                    if !needs_wake(thread_state(tid)) {
                        // Runnable, waiting for a CPU: it ticks when it gets one.
                        continue;
                    }
                    // Said once per shard; wsgate_shard_watchdog_wakes_total counts them all.
                    if !std::mem::replace(&mut logged[shard], true) {
                        // Where it sleeps: io_cqring_wait is glommio's park; anything else
                        // (futex_wait: a lock) is not the glommio stall.
                        let wchan = std::fs::read_to_string(format!("/proc/self/task/{tid}/wchan"))
                            .unwrap_or_else(|_| "unknown".into());
                        tracing::warn!(
                            shard,
                            ticks = STALL_TICKS,
                            wchan = wchan.trim(),
                            "shard stalled, woken by the watchdog (counted in wsgate_shard_watchdog_wakes_total)"
                        );
                    }
                    shards[shard].kick();
                }
            }
        })
}

/// The scheduler state of thread `tid` of this process (`R`, `S`, `D`, ...), from
/// `/proc`.
pub fn thread_state(tid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything; the state follows
    // the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

/// Whether a shard that missed its ticks needs a wake: yes if its thread sleeps (a
/// parked executor) or its state is unknown; no if it is runnable or in the kernel's
/// uninterruptible wait (it will tick once it gets a CPU, and a wake would not get it
/// one sooner).
pub fn needs_wake(state: Option<char>) -> bool {
    !matches!(state, Some('R' | 'D'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn my_tid() -> i32 {
        let link = std::fs::read_link("/proc/thread-self").expect("/proc");
        link.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .expect("a tid")
    }

    #[test]
    fn only_a_sleeping_shard_is_woken() {
        assert!(needs_wake(Some('S')));
        assert!(needs_wake(None));
        assert!(!needs_wake(Some('R')));
        assert!(!needs_wake(Some('D')));
        assert_eq!(thread_state(my_tid()), Some('R'));
        // A thread blocked on a channel until this one lets it go: it sleeps for as
        // long as it takes this thread to look, however slowly that runs.
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || {
            tid_tx.send(my_tid()).unwrap();
            let _ = go_rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        // Between its send and its block in recv it is still running: poll until it sleeps.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut state = thread_state(tid);
        while state != Some('S') && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            state = thread_state(tid);
        }
        assert_eq!(state, Some('S'));
        go_tx.send(()).unwrap();
        sleeper.join().unwrap();
        // Gone: unknown, which asks for a wake (the safe side).
        assert_eq!(thread_state(tid), None);
    }

    #[test]
    fn a_ticking_shard_is_left_alone() {
        let mut seen = vec![Seen::default(); 2];
        for t in 1..100u64 {
            assert!(check(&mut seen, &[t, t]).is_empty());
        }
    }

    #[test]
    fn a_silent_shard_is_woken_after_stall_ticks_and_again_while_silent() {
        let mut seen = vec![Seen::default(); 2];
        let mut woken = Vec::new();
        for t in 1..=(3 * u64::from(STALL_TICKS)) {
            // Shard 0 ticks; shard 1 is stuck at 5.
            let wake = check(&mut seen, &[t, t.min(5)]);
            if !wake.is_empty() {
                woken.push((t, wake));
            }
        }
        let expected: Vec<(u64, Vec<usize>)> = (1..=3 * u64::from(STALL_TICKS))
            .filter(|t| *t > 5 && (t - 5) % u64::from(STALL_TICKS) == 0)
            .map(|t| (t, vec![1]))
            .collect();
        assert_eq!(woken, expected);
        // Once it ticks again, it starts over.
        assert!(check(&mut seen, &[3 * u64::from(STALL_TICKS) + 1, 6]).is_empty());
        assert_eq!(seen[1], Seen { ticks: 6, unchanged: 0 });
    }
}
