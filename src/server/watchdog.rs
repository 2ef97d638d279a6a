//! Wakes a shard that slept through its ticks.
//!
//! glommio 0.9 can park an executor that still has work (the wake-up from its latency
//! ring to its main ring is lost; seen here when 118 processes shared two cores during
//! the density runs): the shard then sits in `io_uring_enter` while its sockets wait,
//! and even its own tick timer does not run. An event on a source the executor watches
//! may revive it, so one thread per process checks every shard's tick counter and rings
//! the doorbell of a shard whose counter has not moved for [`STALL_TICKS`] ticks. A
//! healthy shard costs this thread one relaxed load per check; each wake is counted
//! (`wsgate_shard_watchdog_wakes_total`). This is a mitigation, not a cure: it cleared
//! every stall of a 500,000-connection run, but at 900,000 connections (CPU pressure
//! 98%) five shards stayed parked despite repeated rings.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::shard::ShardHandle;

/// Ticks a shard may miss before it is woken. Waking a shard that was only busy is
/// harmless (one spare byte on its doorbell), so this is short: a stalled shard loses
/// about three ticks (300 ms by default). In a 500,000-connection run on two
/// oversubscribed cores the watchdog woke shards 158 times at ten ticks each.
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
                    // Said once per shard; wsgate_shard_watchdog_wakes_total counts them all.
                    if !std::mem::replace(&mut logged[shard], true) {
                        eprintln!(
                            "wsgate: shard {shard} missed {STALL_TICKS} ticks and was woken by the watchdog (an \
                             executor wake-up was lost; counted in wsgate_shard_watchdog_wakes_total)"
                        );
                    }
                    shards[shard].kick();
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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
