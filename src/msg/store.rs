//! Where the owner keeps messages: per-inbox and per-room history logs (for recovery)
//! and per-user offline queues, behind the small [`Store`] trait.
//!
//! The owner logic (`owner.rs`) only talks to the trait, so an on-disk log (glommio's
//! direct-I/O files) or Redis streams can replace [`MemStore`] without touching it.
//! Records carry the encoded frame, so a replay is a reference-count increment per
//! message and never a re-encode; a durable store writes the frame's bytes.
//!
//! Every log and queue is bounded by count, bytes and age ([`MsgLimits`]): history
//! forgets its oldest entries (a client resuming from before them is told to resync);
//! an offline queue drops its oldest message when full (the newest are what a user
//! opening the app wants) and counts it. Age is checked on every append and read and by
//! [`Store::sweep`] on the owner's tick.
//!
//! The in-memory store is a cache: it is lost on restart, which the owner reports to
//! clients through a new epoch.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use super::protocol::ClientId;
use super::{Key, MsgLimits};
use crate::proto::frame::SharedFrame;

/// Which log: a user's inbox or a room.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LogKey {
    /// The inbox of a user.
    Inbox(Key),
    /// A room.
    Room(Key),
}

/// Who sent an inbox message, kept so the recipient's `ack` can become a `receipt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sender {
    /// The sender's user id.
    pub user: Key,
    /// The id the sender gave the message.
    pub id: Option<ClientId>,
}

/// One stored message.
#[derive(Clone, Debug)]
pub struct Record {
    /// Its sequence number in its log (1, 2, 3 … within an epoch).
    pub seq: u64,
    /// When it was accepted (the owner's `now`).
    pub at: Instant,
    /// The frame as delivered (`msg` or `room_msg`), shared with every recipient.
    pub frame: SharedFrame,
    /// The sender of an inbox message; `None` for rooms.
    pub sender: Option<Sender>,
    /// Set once the recipient acknowledged it, so a second ack sends no second receipt.
    pub acked: bool,
}

impl Record {
    /// Bytes the record counts against the byte limits.
    pub fn bytes(&self) -> usize {
        self.frame.len()
    }
}

/// What [`Store::sweep`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// History entries forgotten for age.
    pub history_trimmed: u64,
    /// Offline messages dropped for age.
    pub offline_expired: u64,
}

/// What [`Store::offline_push`] had to drop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OfflinePushed {
    /// Oldest messages dropped to make room (count or bytes).
    pub dropped: u64,
    /// Messages dropped for age on the way.
    pub expired: u64,
}

/// Storage for the owner's logs and queues. Sequence numbers are the owner's: the
/// store keeps records in the order appended (ascending `seq`) and never renumbers.
pub trait Store {
    /// Appends `record` to `log` and trims the log to its limits; returns how many old
    /// records were forgotten.
    fn append(&mut self, log: &LogKey, record: Record, now: Instant) -> u64;
    /// Appends every record of `log` with `seq > after` to `out`, in order (after
    /// forgetting what is too old). The caller checks for a gap.
    fn read_since(&mut self, log: &LogKey, after: u64, now: Instant, out: &mut Vec<Record>);
    /// The record `seq` of `log`, if still held.
    fn get_mut(&mut self, log: &LogKey, seq: u64) -> Option<&mut Record>;
    /// Sequence number of the oldest record held, if any.
    fn first_seq(&self, log: &LogKey) -> Option<u64>;
    /// Forgets `log` entirely.
    fn forget(&mut self, log: &LogKey);
    /// Queues `record` for offline `user`, dropping the oldest when over the limits.
    fn offline_push(&mut self, user: &Key, record: Record, now: Instant) -> OfflinePushed;
    /// Moves `user`'s offline queue into `out` (oldest first); returns how many were
    /// dropped for age instead.
    fn offline_take(&mut self, user: &Key, now: Instant, out: &mut Vec<Record>) -> u64;
    /// Messages waiting for `user`.
    fn offline_len(&self, user: &Key) -> usize;
    /// Forgets what is too old in every log and queue.
    fn sweep(&mut self, now: Instant) -> Swept;
    /// Records held in all logs and queues (a gauge, and for tests).
    fn records(&self) -> usize;
}

/// A bounded FIFO of records with a byte count.
#[derive(Debug, Default)]
struct Fifo {
    records: VecDeque<Record>,
    bytes: usize,
}

impl Fifo {
    fn push(&mut self, record: Record) {
        self.bytes += record.bytes();
        self.records.push_back(record);
    }

    fn pop_front(&mut self) -> Option<Record> {
        let record = self.records.pop_front()?;
        self.bytes -= record.bytes();
        Some(record)
    }

    /// Drops from the front while over `count`/`bytes`; the newest record always stays
    /// (a single message larger than the byte limit is still delivered once).
    fn trim_size(&mut self, count: usize, bytes: usize) -> u64 {
        let mut dropped = 0;
        while self.records.len() > 1 && (self.records.len() > count || self.bytes > bytes) {
            self.pop_front();
            dropped += 1;
        }
        if count == 0 && self.pop_front().is_some() {
            dropped += 1;
        }
        dropped
    }

    fn trim_age(&mut self, now: Instant, max_age: Duration) -> u64 {
        let mut dropped = 0;
        while self
            .records
            .front()
            .is_some_and(|r| now.saturating_duration_since(r.at) > max_age)
        {
            self.pop_front();
            dropped += 1;
        }
        dropped
    }
}

/// The in-memory [`Store`]: one `VecDeque` per log and per offline queue.
#[derive(Debug)]
pub struct MemStore {
    limits: MsgLimits,
    logs: HashMap<LogKey, Fifo>,
    offline: HashMap<Key, Fifo>,
}

impl MemStore {
    /// An empty store with these limits.
    pub fn new(limits: &MsgLimits) -> Self {
        Self {
            limits: limits.clone(),
            logs: HashMap::new(),
            offline: HashMap::new(),
        }
    }
}

impl Store for MemStore {
    fn append(&mut self, log: &LogKey, record: Record, now: Instant) -> u64 {
        let l = &self.limits;
        let fifo = self.logs.entry(log.clone()).or_default();
        debug_assert!(fifo.records.back().is_none_or(|last| last.seq < record.seq));
        fifo.push(record);
        fifo.trim_age(now, l.history_max_age) + fifo.trim_size(l.history_max_messages, l.history_max_bytes)
    }

    fn read_since(&mut self, log: &LogKey, after: u64, now: Instant, out: &mut Vec<Record>) {
        let Some(fifo) = self.logs.get_mut(log) else {
            return;
        };
        fifo.trim_age(now, self.limits.history_max_age);
        // Sequence numbers are contiguous within a log, so the start is an index.
        let first = fifo.records.front().map_or(0, |r| r.seq);
        let skip = after
            .saturating_sub(first)
            .saturating_add(1)
            .min(fifo.records.len() as u64);
        let skip = if after < first { 0 } else { skip as usize };
        out.extend(fifo.records.iter().skip(skip).cloned());
        debug_assert!(out.iter().all(|r| r.seq > after));
    }

    fn get_mut(&mut self, log: &LogKey, seq: u64) -> Option<&mut Record> {
        let fifo = self.logs.get_mut(log)?;
        let first = fifo.records.front()?.seq;
        let record = fifo.records.get_mut(usize::try_from(seq.checked_sub(first)?).ok()?)?;
        debug_assert_eq!(record.seq, seq);
        Some(record)
    }

    fn first_seq(&self, log: &LogKey) -> Option<u64> {
        self.logs.get(log)?.records.front().map(|r| r.seq)
    }

    fn forget(&mut self, log: &LogKey) {
        self.logs.remove(log);
    }

    fn offline_push(&mut self, user: &Key, record: Record, now: Instant) -> OfflinePushed {
        let l = &self.limits;
        let fifo = self.offline.entry(user.clone()).or_default();
        let expired = fifo.trim_age(now, l.offline_max_age);
        fifo.push(record);
        let dropped = fifo.trim_size(l.offline_max_messages, l.offline_max_bytes);
        if fifo.records.is_empty() {
            self.offline.remove(user);
        }
        OfflinePushed { dropped, expired }
    }

    fn offline_take(&mut self, user: &Key, now: Instant, out: &mut Vec<Record>) -> u64 {
        let Some(mut fifo) = self.offline.remove(user) else {
            return 0;
        };
        let expired = fifo.trim_age(now, self.limits.offline_max_age);
        out.extend(fifo.records);
        expired
    }

    fn offline_len(&self, user: &Key) -> usize {
        self.offline.get(user).map_or(0, |f| f.records.len())
    }

    fn sweep(&mut self, now: Instant) -> Swept {
        let mut swept = Swept::default();
        let l = &self.limits;
        self.logs.retain(|_, fifo| {
            swept.history_trimmed += fifo.trim_age(now, l.history_max_age);
            !fifo.records.is_empty()
        });
        self.offline.retain(|_, fifo| {
            swept.offline_expired += fifo.trim_age(now, l.offline_max_age);
            !fifo.records.is_empty()
        });
        swept
    }

    fn records(&self) -> usize {
        self.logs
            .values()
            .chain(self.offline.values())
            .map(|f| f.records.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::OpCode;

    fn rec(seq: u64, at: Instant, len: usize) -> Record {
        Record {
            seq,
            at,
            frame: SharedFrame::new(OpCode::Text, &vec![b'x'; len]),
            sender: None,
            acked: false,
        }
    }

    fn limits() -> MsgLimits {
        MsgLimits {
            history_max_messages: 4,
            history_max_bytes: 1000,
            history_max_age: Duration::from_secs(10),
            offline_max_messages: 3,
            offline_max_bytes: 300,
            offline_max_age: Duration::from_secs(60),
            ..MsgLimits::default()
        }
    }

    fn seqs(records: &[Record]) -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn history_is_bounded_by_count_bytes_and_age() {
        let t0 = Instant::now();
        let mut store = MemStore::new(&limits());
        let log = LogKey::Room("r".into());
        let mut trimmed = 0;
        for seq in 1..=6 {
            trimmed += store.append(&log, rec(seq, t0, 10), t0);
        }
        assert_eq!(trimmed, 2);
        assert_eq!(store.first_seq(&log), Some(3));
        let mut out = Vec::new();
        store.read_since(&log, 0, t0, &mut out);
        assert_eq!(seqs(&out), [3, 4, 5, 6]);
        out.clear();
        store.read_since(&log, 4, t0, &mut out);
        assert_eq!(seqs(&out), [5, 6]);
        out.clear();
        store.read_since(&log, 6, t0, &mut out);
        assert!(out.is_empty());
        assert!(store.get_mut(&log, 5).is_some() && store.get_mut(&log, 2).is_none());
        // Bytes: one 600-byte record pushes out older ones until under 1000 bytes.
        store.append(&log, rec(7, t0, 600), t0);
        store.append(&log, rec(8, t0, 600), t0);
        assert_eq!(store.first_seq(&log), Some(8));
        // Age.
        let later = t0 + Duration::from_secs(11);
        store.append(&log, rec(9, later, 10), later);
        assert_eq!(store.first_seq(&log), Some(9));
        let swept = store.sweep(later + Duration::from_secs(11));
        assert_eq!(swept.history_trimmed, 1);
        assert_eq!(store.first_seq(&log), None);
        assert_eq!(store.records(), 0);
    }

    #[test]
    fn offline_queue_drops_oldest_and_expires() {
        let t0 = Instant::now();
        let mut store = MemStore::new(&limits());
        let bob: Key = "bob".into();
        let mut dropped = 0;
        for seq in 1..=5 {
            dropped += store.offline_push(&bob, rec(seq, t0, 10), t0).dropped;
        }
        assert_eq!(dropped, 2);
        assert_eq!(store.offline_len(&bob), 3);
        // Bytes: 3 × 100+ bytes is over 300.
        let pushed = store.offline_push(&bob, rec(6, t0, 150), t0);
        assert_eq!(pushed.dropped, 1);
        let mut out = Vec::new();
        assert_eq!(store.offline_take(&bob, t0, &mut out), 0);
        assert_eq!(seqs(&out), [4, 5, 6]);
        assert_eq!(store.offline_len(&bob), 0);
        store.offline_push(&bob, rec(7, t0, 10), t0);
        let late = t0 + Duration::from_secs(61);
        store.offline_push(&bob, rec(8, late, 10), late);
        out.clear();
        assert_eq!(store.offline_take(&bob, late, &mut out), 0, "expired at the push");
        assert_eq!(seqs(&out), [8]);
        store.offline_push(&bob, rec(9, t0, 10), t0);
        assert_eq!(store.sweep(late).offline_expired, 1);
        assert_eq!(store.offline_len(&bob), 0);
    }
}
