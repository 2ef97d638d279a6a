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
//! Without a journal [`MemStore`] is a cache: it is lost on restart, which the owner
//! reports to clients through a new epoch. With one ([`MemStore::durable`], what
//! `--store disk` builds) it stays the index the owner reads, and every change the
//! owner makes through the trait is also encoded as a journal record
//! ([`super::journal`]); the server persists those bytes and releases the owner's
//! answers once they are durable ([`Store::journal_end`]). A restart loads what the
//! journal recovered ([`MemStore::load`]) under the same limits, so sequence numbers,
//! epochs, histories and offline queues come back.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use super::journal::{Encoder, RecoveredLog, WallClock};
use super::protocol::ClientId;
use super::{Key, MsgLimits, Position};
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

/// What [`Store::ack`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acked {
    /// The message is not in the inbox history.
    Unknown,
    /// It was acknowledged before (another device): nothing more to do.
    Again,
    /// First acknowledgement; the sender, if any, gets a receipt.
    First(Option<Sender>),
}

/// Storage for the owner's logs and queues. Sequence numbers are the owner's: the
/// store keeps records in the order appended (ascending `seq`) and never renumbers.
pub trait Store {
    /// The position `log` starts from when the owner creates its entry: what the store
    /// recovered for it, else `fresh` (a new epoch at seq 0), which a durable store
    /// records so that the epoch survives a restart.
    fn start_position(&mut self, log: &LogKey, fresh: Position) -> Position;
    /// Appends `record` to `log` and trims the log to its limits; returns how many old
    /// records were forgotten. An inbox record that [`offline_push`](Self::offline_push)
    /// queued just before is journaled as queued.
    fn append(&mut self, log: &LogKey, record: Record, now: Instant) -> u64;
    /// Appends every record of `log` with `seq > after` to `out`, in order (after
    /// forgetting what is too old). The caller checks for a gap.
    fn read_since(&mut self, log: &LogKey, after: u64, now: Instant, out: &mut Vec<Record>);
    /// Marks inbox message `seq` of `user` acknowledged.
    fn ack(&mut self, user: &Key, seq: u64) -> Acked;
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
    /// Where the store's journal ends: bytes of records produced so far. Answers that
    /// depend on a change wait until the journal is durable up to here. Always 0 for a
    /// store without a journal.
    fn journal_end(&self) -> u64 {
        0
    }
    /// Whether new messages are refused because the store's disk budget is spent.
    fn full(&self) -> bool {
        false
    }
    /// Writes `log`'s position and every record it still holds into the journal again
    /// (a compaction: after it, older segments hold nothing needed). No-op without a
    /// journal.
    fn restate(&mut self, log: &LogKey, pos: Position) {
        let _ = (log, pos);
    }
    /// Restates the logs recovered at start that the owner has not opened yet (their
    /// positions and records live only in the store). No-op without a journal.
    fn restate_unclaimed(&mut self) {}
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

/// The journal side of a durable [`MemStore`].
#[derive(Debug)]
pub struct Journal {
    /// Records encoded and not yet handed to the writer.
    pub encoder: Encoder,
    /// Instants to wall-clock time and back.
    pub clock: WallClock,
    /// Positions recovered at start for logs the owner has not opened yet. A compaction
    /// restates them too (their records would be lost otherwise); those with nothing
    /// stored are forgotten once idle for `history_max_age` after the load, as the owner
    /// forgets an idle entry.
    recovered: HashMap<LogKey, Position>,
    /// When [`MemStore::load`] ran.
    loaded_at: Option<Instant>,
    /// Set by the writer when the disk budget is spent.
    pub full: bool,
}

/// What [`MemStore::load`] put back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Logs with a position.
    pub logs: u64,
    /// History records held.
    pub history: u64,
    /// Offline messages queued.
    pub offline: u64,
    /// Records not loaded because the limits (count, bytes, age) drop them now.
    pub trimmed: u64,
}

/// The in-memory [`Store`]: one `VecDeque` per log and per offline queue, and with a
/// journal, the records that make it durable.
#[derive(Debug)]
pub struct MemStore {
    limits: MsgLimits,
    logs: HashMap<LogKey, Fifo>,
    offline: HashMap<Key, Fifo>,
    journal: Option<Box<Journal>>,
}

impl MemStore {
    /// An empty store with these limits.
    pub fn new(limits: &MsgLimits) -> Self {
        Self {
            limits: limits.clone(),
            logs: HashMap::new(),
            offline: HashMap::new(),
            journal: None,
        }
    }

    /// An empty store that journals every change, the journal starting at byte `end`
    /// (what the log already holds) and converting times with `clock`.
    pub fn durable(limits: &MsgLimits, end: u64, clock: WallClock) -> Self {
        Self {
            journal: Some(Box::new(Journal {
                encoder: Encoder::new(end),
                clock,
                recovered: HashMap::new(),
                loaded_at: None,
                full: false,
            })),
            ..Self::new(limits)
        }
    }

    /// The journal, if this store has one.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_deref()
    }

    /// The journal, if this store has one.
    pub fn journal_mut(&mut self) -> Option<&mut Journal> {
        self.journal.as_deref_mut()
    }

    /// Loads what recovery rebuilt, under today's limits (records that are too many,
    /// too large or too old now are left out and counted). Call on an empty store.
    pub fn load(&mut self, logs: Vec<RecoveredLog>, now: Instant) -> Loaded {
        let mut loaded = Loaded::default();
        if let Some(journal) = self.journal.as_deref_mut() {
            journal.loaded_at = Some(now);
        }
        for recovered in logs {
            let RecoveredLog {
                log,
                pos,
                records,
                offline,
            } = recovered;
            loaded.logs += 1;
            if let Some(journal) = self.journal.as_deref_mut() {
                journal.recovered.insert(log.clone(), pos);
            }
            let user = match &log {
                LogKey::Inbox(user) => Some(user.clone()),
                LogKey::Room(_) => None,
            };
            let l = &self.limits;
            let mut queue = Fifo::default();
            let mut history = Fifo::default();
            let mut queued = offline.iter().peekable();
            for record in records {
                if queued.next_if(|&&seq| seq == record.seq).is_some() {
                    queue.push(record.clone());
                }
                history.push(record);
            }
            loaded.trimmed += history.trim_age(now, l.history_max_age)
                + history.trim_size(l.history_max_messages, l.history_max_bytes);
            loaded.trimmed +=
                queue.trim_age(now, l.offline_max_age) + queue.trim_size(l.offline_max_messages, l.offline_max_bytes);
            loaded.history += history.records.len() as u64;
            loaded.offline += queue.records.len() as u64;
            if !history.records.is_empty() {
                self.logs.insert(log, history);
            }
            if let (Some(user), false) = (user, queue.records.is_empty()) {
                self.offline.insert(user, queue);
            }
        }
        loaded
    }

    /// Sets whether the disk budget is spent (the writer's verdict).
    pub fn set_full(&mut self, full: bool) {
        if let Some(journal) = self.journal.as_deref_mut() {
            journal.full = full;
        }
    }

    /// The record `seq` of `log`, if still held (tests).
    pub fn get_mut(&mut self, log: &LogKey, seq: u64) -> Option<&mut Record> {
        let fifo = self.logs.get_mut(log)?;
        let first = fifo.records.front()?.seq;
        let record = fifo.records.get_mut(usize::try_from(seq.checked_sub(first)?).ok()?)?;
        debug_assert_eq!(record.seq, seq);
        Some(record)
    }
}

impl Store for MemStore {
    fn start_position(&mut self, log: &LogKey, fresh: Position) -> Position {
        let Some(journal) = self.journal.as_deref_mut() else {
            return fresh;
        };
        match journal.recovered.remove(log) {
            Some(pos) if pos.epoch != 0 => pos,
            recovered => {
                // A log whose epoch record was lost keeps its sequence numbers under a
                // new epoch (clients holding the old one are told to resync).
                let pos = Position {
                    epoch: fresh.epoch,
                    seq: recovered.map_or(fresh.seq, |p| p.seq),
                };
                journal.encoder.position(log, pos);
                pos
            }
        }
    }

    fn append(&mut self, log: &LogKey, record: Record, now: Instant) -> u64 {
        if let Some(journal) = self.journal.as_deref_mut() {
            let queued = match log {
                LogKey::Inbox(user) => self
                    .offline
                    .get(user)
                    .and_then(|f| f.records.back())
                    .is_some_and(|r| r.seq == record.seq),
                LogKey::Room(_) => false,
            };
            let ms = journal.clock.ms(record.at);
            journal.encoder.message(log, &record, ms, queued);
        }
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

    fn ack(&mut self, user: &Key, seq: u64) -> Acked {
        let log = LogKey::Inbox(user.clone());
        let Some(record) = self.get_mut(&log, seq) else {
            return Acked::Unknown;
        };
        if record.acked {
            return Acked::Again;
        }
        record.acked = true;
        let sender = record.sender.clone();
        // An acknowledged message leaves the offline queue too (the user has it).
        if let Some(queue) = self.offline.get_mut(user)
            && let Some(i) = queue.records.iter().position(|r| r.seq == seq)
        {
            let removed = queue.records.remove(i).expect("index found above");
            queue.bytes -= removed.bytes();
            if queue.records.is_empty() {
                self.offline.remove(user);
            }
        }
        if let Some(journal) = self.journal.as_deref_mut() {
            journal.encoder.ack(user, seq);
        }
        Acked::First(sender)
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
        if let (Some(journal), Some(last)) = (self.journal.as_deref_mut(), fifo.records.back()) {
            journal.encoder.take_offline(user, last.seq);
        }
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
        if let Some(journal) = self.journal.as_deref_mut()
            && journal
                .loaded_at
                .is_some_and(|at| now.saturating_duration_since(at) > l.history_max_age)
        {
            let (logs, offline) = (&self.logs, &self.offline);
            journal.recovered.retain(|log, _| {
                logs.contains_key(log) || matches!(log, LogKey::Inbox(user) if offline.contains_key(user))
            });
        }
        swept
    }

    fn records(&self) -> usize {
        self.logs
            .values()
            .chain(self.offline.values())
            .map(|f| f.records.len())
            .sum()
    }

    fn journal_end(&self) -> u64 {
        self.journal.as_ref().map_or(0, |j| j.encoder.end())
    }

    fn full(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| j.full)
    }

    fn restate_unclaimed(&mut self) {
        let Some(journal) = self.journal.as_deref() else {
            return;
        };
        let unclaimed: Vec<(LogKey, Position)> = journal.recovered.iter().map(|(l, p)| (l.clone(), *p)).collect();
        for (log, pos) in unclaimed {
            self.restate(&log, pos);
        }
    }

    fn restate(&mut self, log: &LogKey, pos: Position) {
        let Some(journal) = self.journal.as_deref_mut() else {
            return;
        };
        journal.encoder.position(log, pos);
        let history = self.logs.get(log).map(|f| &f.records);
        let queue = match log {
            LogKey::Inbox(user) => self.offline.get(user).map(|f| &f.records),
            LogKey::Room(_) => None,
        };
        let empty = VecDeque::new();
        let (history, queue) = (history.unwrap_or(&empty), queue.unwrap_or(&empty));
        // Merge by seq: queued records older than the history's start are written too.
        let (mut h, mut q) = (history.iter().peekable(), queue.iter().peekable());
        loop {
            let (record, queued) = match (h.peek(), q.peek()) {
                (None, None) => break,
                (Some(a), Some(b)) if a.seq == b.seq => {
                    q.next();
                    (h.next().expect("peeked"), true)
                }
                (Some(a), Some(b)) if b.seq < a.seq => (q.next().expect("peeked"), true),
                (Some(_), _) => (h.next().expect("peeked"), false),
                (None, Some(_)) => (q.next().expect("peeked"), true),
            };
            let ms = journal.clock.ms(record.at);
            journal.encoder.message(log, record, ms, queued);
        }
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
