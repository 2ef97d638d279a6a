//! One hashed timer wheel per shard: every connection deadline (handshake, heartbeat,
//! close handshake, linger, drain) without a timer object per connection.
//!
//! The wheel holds at most a few 8-byte entries per connection: its slab [`Key`] (slot
//! and generation, so an entry outliving its connection is recognised). It is lazy: a
//! connection is scheduled for the tick of its earliest deadline, and when that tick
//! fires the shard asks the connection for its real deadline again; if the deadline has
//! moved later (input arrived, so the heartbeat moved), the connection is scheduled
//! anew. So the hot path (every message moves the heartbeat) never touches the wheel;
//! only a deadline that moves *earlier* adds an entry, and the entry it supersedes is
//! recognised as stale when it fires (its tick no longer matches the connection's).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use crate::slab::Key;

/// The wheel.
#[derive(Debug)]
pub struct Wheel {
    /// One list of entries per tick, indexed by tick modulo the slot count.
    slots: Vec<Vec<Key>>,
    /// Length of a tick.
    tick: Duration,
    /// Instant of tick 0.
    origin: Instant,
    /// The last tick whose entries have been handed out.
    fired: u64,
}

impl Wheel {
    /// A wheel with `slots` ticks of `tick` each, starting at `origin`. Deadlines beyond
    /// `slots × tick` are parked at the horizon and rescheduled when it comes.
    pub fn new(origin: Instant, tick: Duration, slots: usize) -> Self {
        assert!(slots >= 2 && !tick.is_zero());
        Self {
            slots: (0..slots).map(|_| Vec::new()).collect(),
            tick,
            origin,
            fired: 0,
        }
    }

    /// The first tick at or after `at`, so a deadline never fires early.
    pub fn tick_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin).as_nanos();
        let tick = self.tick.as_nanos();
        since.div_ceil(tick) as u64
    }

    /// Schedules `entry` for the tick of `at` and returns the tick actually used: the
    /// next tick for deadlines already past, the horizon for deadlines beyond it. The
    /// caller remembers the returned tick to recognise stale entries.
    pub fn schedule(&mut self, at: Instant, entry: Key) -> u64 {
        let horizon = self.fired + self.slots.len() as u64;
        let tick = self.tick_of(at).clamp(self.fired + 1, horizon);
        let index = (tick % self.slots.len() as u64) as usize;
        self.slots[index].push(entry);
        tick
    }

    /// Hands out, into `out`, the entries of every tick up to `now`, each with its tick.
    pub fn advance(&mut self, now: Instant, out: &mut Vec<(u64, Key)>) {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        let now_tick = ((since / self.tick.as_nanos()) as u64).max(self.fired);
        // Past a full turn, every slot is due once: do not loop over missed turns.
        let first = (self.fired + 1).max(now_tick.saturating_sub(self.slots.len() as u64 - 1));
        for tick in first..=now_tick {
            let index = (tick % self.slots.len() as u64) as usize;
            // Taken, not drained: a slot that once held many entries must not keep
            // their memory for the whole turn of the wheel.
            out.extend(
                std::mem::take(&mut self.slots[index])
                    .into_iter()
                    .map(|entry| (tick, entry)),
            );
        }
        self.fired = now_tick;
    }

    /// The last tick handed out.
    pub fn fired(&self) -> u64 {
        self.fired
    }

    /// Entries held (stale ones included): for the memory figures.
    pub fn len(&self) -> usize {
        self.slots.iter().map(Vec::len).sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Vec::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(slot: u32) -> Key {
        Key::new(slot, 0)
    }

    #[test]
    fn fires_at_the_deadline_tick_never_before() {
        let origin = Instant::now();
        let tick = Duration::from_millis(100);
        let mut wheel = Wheel::new(origin, tick, 64);
        let at = origin + Duration::from_millis(250);
        let used = wheel.schedule(at, entry(1));
        assert_eq!(used, 3);
        let mut out = Vec::new();
        wheel.advance(origin + Duration::from_millis(299), &mut out);
        assert!(out.is_empty());
        wheel.advance(origin + Duration::from_millis(300), &mut out);
        assert_eq!(out, vec![(3, entry(1))]);
        assert!(origin + tick * used as u32 >= at);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_tick() {
        let origin = Instant::now();
        let mut wheel = Wheel::new(origin, Duration::from_millis(10), 16);
        let mut out = Vec::new();
        wheel.advance(origin + Duration::from_millis(55), &mut out);
        assert_eq!(wheel.schedule(origin, entry(7)), wheel.fired() + 1);
    }

    #[test]
    fn deadlines_beyond_the_horizon_park_at_the_horizon() {
        let origin = Instant::now();
        let mut wheel = Wheel::new(origin, Duration::from_millis(10), 16);
        let tick = wheel.schedule(origin + Duration::from_secs(100), entry(2));
        assert_eq!(tick, 16);
        let mut out = Vec::new();
        wheel.advance(origin + Duration::from_millis(160), &mut out);
        assert_eq!(out, vec![(16, entry(2))]);
    }

    #[test]
    fn a_long_pause_hands_out_every_entry_once() {
        let origin = Instant::now();
        let mut wheel = Wheel::new(origin, Duration::from_millis(10), 8);
        for i in 0..8 {
            wheel.schedule(origin + Duration::from_millis(10 * (i + 1)), entry(i as u32));
        }
        let mut out = Vec::new();
        wheel.advance(origin + Duration::from_secs(60), &mut out);
        let mut slots: Vec<u32> = out.iter().map(|(_, e)| e.index()).collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..8).collect::<Vec<_>>());
        assert!(wheel.is_empty());
    }

    #[test]
    fn many_entries_spread_and_fire_in_tick_order() {
        let origin = Instant::now();
        let mut wheel = Wheel::new(origin, Duration::from_millis(1), 128);
        for i in 0..1000u32 {
            wheel.schedule(origin + Duration::from_micros(u64::from(i) * 97), entry(i));
        }
        let mut out = Vec::new();
        let mut last = 0;
        for step in 1..=200 {
            out.clear();
            wheel.advance(origin + Duration::from_millis(step), &mut out);
            for (tick, _) in &out {
                assert!(*tick >= last);
                last = *tick;
            }
        }
        assert!(wheel.is_empty());
    }
}
