//! The journal: the records a durable store writes so that its state can be rebuilt
//! after a restart or a crash, their byte format, and the recovery that reads them back.
//! Sans-IO: records are encoded into a byte buffer the server's writer task persists
//! (`server::journal`), and recovery is handed the bytes of each segment file.
//!
//! # Format
//!
//! A segment is a sequence of records, each `len: u32 LE` (of the payload),
//! `crc: u32 LE` (CRC32C of the payload), then `len` payload bytes. The payload starts
//! with a tag:
//!
//! | tag | record | fields |
//! |---|---|---|
//! | 1 | a message | log kind, key, seq, wall-clock ms, flags (offline, acked, sender, id), sender, id, the frame's payload |
//! | 2 | a position | log kind, key, epoch, seq: a log's epoch began (or was re-stated by a compaction) |
//! | 3 | an ack | user, seq: the recipient acknowledged inbox message `seq` |
//! | 4 | a take | user, seq: the offline queue was delivered up to `seq` |
//!
//! Keys are `u16`-length-prefixed UTF-8, ids too; the frame's payload is the rest.
//!
//! # Recovery
//!
//! [`Recovery::feed`] reads one segment's bytes; a record whose length runs past the
//! end (a torn write) or whose CRC does not match (a corrupt sector) ends the segment
//! there: it and everything after it in that segment are cut and counted, never a
//! panic. The records are order-independent where they can be: a log's messages are
//! kept by sequence number (a compaction's copy of a record and the original agree), an
//! ack is sticky, a take keeps the highest sequence number, and a position with a new
//! epoch discards the messages of the log's previous life. [`Recovery::finish`] then
//! gives each log's position and its messages in order, with their offline and acked
//! flags resolved, for the store to load under its limits.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hashbrown::HashMap;

use super::protocol::ClientId;
use super::store::{LogKey, Record, Sender};
use super::{Key, Position};
use crate::proto::frame::SharedFrame;

/// Bytes before each record's payload: its length and its CRC.
pub const RECORD_HEADER_BYTES: usize = 8;
/// The largest payload a record may have: a message frame is at most the message limit
/// (16 MiB at most, see `limits`) plus its fields, far below this. A larger length in a
/// header is corruption.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

const TAG_MSG: u8 = 1;
const TAG_POSITION: u8 = 2;
const TAG_ACK: u8 = 3;
const TAG_TAKE: u8 = 4;

const KIND_INBOX: u8 = 0;
const KIND_ROOM: u8 = 1;

const FLAG_OFFLINE: u8 = 1;
const FLAG_ACKED: u8 = 2;
const FLAG_SENDER: u8 = 4;
const FLAG_ID: u8 = 8;

/// Converts between the monotonic instants the owner works with and the wall-clock
/// milliseconds a record carries (an instant means nothing in another process), from
/// one pair of readings taken together.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    instant: Instant,
    wall_ms: u64,
}

impl WallClock {
    /// The pair (`now`, `wall`), read together.
    pub fn new(now: Instant, wall: SystemTime) -> Self {
        let wall_ms = wall.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        Self { instant: now, wall_ms }
    }

    /// Milliseconds since the Unix epoch of `at`.
    pub fn ms(&self, at: Instant) -> u64 {
        match at.checked_duration_since(self.instant) {
            Some(after) => self.wall_ms.saturating_add(after.as_millis() as u64),
            None => self
                .wall_ms
                .saturating_sub(self.instant.duration_since(at).as_millis() as u64),
        }
    }

    /// The instant of wall-clock `ms`; a time after the reading (a clock that stepped
    /// back since it was written) is the reading's instant.
    pub fn instant(&self, ms: u64) -> Instant {
        let ago = Duration::from_millis(self.wall_ms.saturating_sub(ms));
        self.instant.checked_sub(ago).unwrap_or(self.instant)
    }
}

/// Appends encoded records to a buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
    /// Bytes encoded since the encoder was made (the journal's log sequence number).
    end: u64,
    records: u64,
}

impl Encoder {
    /// An empty encoder whose positions start at `end` (the bytes already in the log).
    pub fn new(end: u64) -> Self {
        Self {
            buf: Vec::new(),
            end,
            records: 0,
        }
    }

    /// The position after the last record encoded: bytes ever written to this log.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Records encoded (a counter).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes encoded and not yet taken.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Takes the bytes encoded so far, leaving `spare` (an empty buffer to reuse).
    pub fn take(&mut self, spare: Vec<u8>) -> Vec<u8> {
        debug_assert!(spare.is_empty());
        std::mem::replace(&mut self.buf, spare)
    }

    /// A message of `log`, `wall_ms` its acceptance time.
    pub fn message(&mut self, log: &LogKey, record: &Record, wall_ms: u64, offline: bool) {
        self.record(|o| {
            o.push(TAG_MSG);
            put_log(o, log);
            o.extend_from_slice(&record.seq.to_le_bytes());
            o.extend_from_slice(&wall_ms.to_le_bytes());
            let sender = record.sender.as_ref();
            let id = sender.and_then(|s| s.id.as_ref());
            let flags = if offline { FLAG_OFFLINE } else { 0 }
                | if record.acked { FLAG_ACKED } else { 0 }
                | if sender.is_some() { FLAG_SENDER } else { 0 }
                | if id.is_some() { FLAG_ID } else { 0 };
            o.push(flags);
            if let Some(sender) = sender {
                put_str(o, &sender.user);
            }
            if let Some(id) = id {
                put_str(o, id.as_json());
            }
            o.extend_from_slice(frame_payload(&record.frame));
        });
    }

    /// `log` is at `pos` (a new epoch, or a compaction restating it).
    pub fn position(&mut self, log: &LogKey, pos: Position) {
        self.record(|o| {
            o.push(TAG_POSITION);
            put_log(o, log);
            o.extend_from_slice(&pos.epoch.to_le_bytes());
            o.extend_from_slice(&pos.seq.to_le_bytes());
        });
    }

    /// `user` acknowledged inbox message `seq`.
    pub fn ack(&mut self, user: &str, seq: u64) {
        self.user_seq(TAG_ACK, user, seq);
    }

    /// `user`'s offline queue was delivered up to `seq`.
    pub fn take_offline(&mut self, user: &str, seq: u64) {
        self.user_seq(TAG_TAKE, user, seq);
    }

    fn user_seq(&mut self, tag: u8, user: &str, seq: u64) {
        self.record(|o| {
            o.push(tag);
            put_str(o, user);
            o.extend_from_slice(&seq.to_le_bytes());
        });
    }

    fn record(&mut self, payload: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
        payload(&mut self.buf);
        let body = &self.buf[start + RECORD_HEADER_BYTES..];
        let len = body.len() as u32;
        let crc = crc32c::crc32c(body);
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        self.end += (self.buf.len() - start) as u64;
        self.records += 1;
    }
}

/// The payload of one of our own text frames (the header is 2, 4 or 10 bytes).
fn frame_payload(frame: &SharedFrame) -> &[u8] {
    let bytes = frame.as_bytes();
    let header = match bytes.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    &bytes[header.min(bytes.len())..]
}

fn put_log(o: &mut Vec<u8>, log: &LogKey) {
    let (kind, key) = match log {
        LogKey::Inbox(key) => (KIND_INBOX, key),
        LogKey::Room(key) => (KIND_ROOM, key),
    };
    o.push(kind);
    put_str(o, key);
}

fn put_str(o: &mut Vec<u8>, s: &str) {
    // Keys and ids are bounded far below 64 KiB by the protocol's limits.
    let len = u16::try_from(s.len()).expect("keys and ids are shorter than 64 KiB");
    o.extend_from_slice(&len.to_le_bytes());
    o.extend_from_slice(s.as_bytes());
}

/// A log named in a record read back, borrowed from the record's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogRef<'a> {
    /// The inbox of a user.
    Inbox(&'a str),
    /// A room.
    Room(&'a str),
}

/// A record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A message.
    Message {
        /// Its log.
        log: LogRef<'a>,
        /// Its sequence number.
        seq: u64,
        /// When it was accepted (wall-clock ms).
        wall_ms: u64,
        /// Queued for an offline recipient when written.
        offline: bool,
        /// Acknowledged when written.
        acked: bool,
        /// The sender of an inbox message.
        sender: Option<(&'a str, Option<&'a str>)>,
        /// The frame's payload (JSON text).
        text: &'a str,
    },
    /// A log's position.
    Position {
        /// The log.
        log: LogRef<'a>,
        /// Its epoch and last sequence number.
        pos: Position,
    },
    /// An inbox ack.
    Ack {
        /// The user.
        user: &'a str,
        /// The message.
        seq: u64,
    },
    /// An offline queue delivered up to `seq`.
    Take {
        /// The user.
        user: &'a str,
        /// The last message delivered.
        seq: u64,
    },
}

/// Why a record could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The bytes end inside the record (a torn write at the tail).
    Torn,
    /// The CRC does not match, or the payload does not parse (corruption).
    Corrupt,
}

/// Reads the record at the start of `bytes`: the record and its total length, `None`
/// at a clean end, or the damage found.
pub fn read_record(bytes: &[u8]) -> Result<Option<(Entry<'_>, usize)>, Damage> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let Some(header) = bytes.get(..RECORD_HEADER_BYTES) else {
        return Err(Damage::Torn);
    };
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > MAX_RECORD_BYTES {
        return Err(Damage::Corrupt);
    }
    let Some(payload) = bytes.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len) else {
        return Err(Damage::Torn);
    };
    if crc32c::crc32c(payload) != crc {
        return Err(Damage::Corrupt);
    }
    let entry = parse(payload).ok_or(Damage::Corrupt)?;
    Ok(Some((entry, RECORD_HEADER_BYTES + len)))
}

/// Whether `bytes` are all zero (a preallocated segment's unwritten space), by blocks
/// the compiler can vectorise.
fn all_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// What [`Recovery::feed`] found in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of whole, intact records from the start: where appends continue.
    pub good: usize,
    /// What follows them is damage (counted and to be truncated), not zeros or nothing.
    pub cut: bool,
}

/// A cursor over a payload.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = u16::from_le_bytes(self.bytes(2)?.try_into().ok()?);
        std::str::from_utf8(self.bytes(usize::from(len))?).ok()
    }

    fn log(&mut self) -> Option<LogRef<'a>> {
        let kind = self.u8()?;
        let key = self.str()?;
        match kind {
            KIND_INBOX => Some(LogRef::Inbox(key)),
            KIND_ROOM => Some(LogRef::Room(key)),
            _ => None,
        }
    }

    fn end(self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

fn parse(payload: &[u8]) -> Option<Entry<'_>> {
    let mut c = Cursor(payload);
    match c.u8()? {
        TAG_MSG => {
            let log = c.log()?;
            let seq = c.u64()?;
            let wall_ms = c.u64()?;
            let flags = c.u8()?;
            let sender = if flags & FLAG_SENDER != 0 {
                let user = c.str()?;
                let id = if flags & FLAG_ID != 0 { Some(c.str()?) } else { None };
                Some((user, id))
            } else {
                None
            };
            let text = std::str::from_utf8(c.0).ok()?;
            Some(Entry::Message {
                log,
                seq,
                wall_ms,
                offline: flags & FLAG_OFFLINE != 0,
                acked: flags & FLAG_ACKED != 0,
                sender,
                text,
            })
        }
        TAG_POSITION => {
            let log = c.log()?;
            let epoch = c.u64()?;
            let seq = c.u64()?;
            c.end()?;
            Some(Entry::Position {
                log,
                pos: Position { epoch, seq },
            })
        }
        tag @ (TAG_ACK | TAG_TAKE) => {
            let user = c.str()?;
            let seq = c.u64()?;
            c.end()?;
            Some(if tag == TAG_ACK {
                Entry::Ack { user, seq }
            } else {
                Entry::Take { user, seq }
            })
        }
        _ => None,
    }
}

/// A message as recovery holds it until [`Recovery::finish`].
#[derive(Debug)]
struct Held {
    wall_ms: u64,
    offline: bool,
    acked: bool,
    sender: Option<Sender>,
    frame: SharedFrame,
}

/// One log as recovery rebuilds it.
#[derive(Debug, Default)]
struct Rebuilt {
    pos: Position,
    messages: BTreeMap<u64, Held>,
}

/// What recovery read, for the start-up report and the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Read {
    /// Records read intact.
    pub records: u64,
    /// Bytes of intact records.
    pub bytes: u64,
    /// Segments whose tail was cut (torn or corrupt).
    pub cut_segments: u64,
    /// Bytes cut from those tails.
    pub cut_bytes: u64,
}

/// Rebuilds the logs from the segments of one shard, fed oldest first.
///
/// A record's names are looked up borrowed from its bytes, and each distinct name is
/// allocated once (`names`): a million messages from a thousand senders make a thousand
/// sender keys, shared by the recovered messages, not a million.
#[derive(Debug, Default)]
pub struct Recovery {
    inboxes: HashMap<Key, Rebuilt>,
    rooms: HashMap<Key, Rebuilt>,
    taken: HashMap<Key, u64>,
    names: hashbrown::HashSet<Key>,
    read: Read,
}

impl Recovery {
    /// The one shared copy of `name`.
    fn name(&mut self, name: &str) -> Key {
        self.names.get_or_insert_with(name, |n| Key::from(n)).clone()
    }

    /// The log `log` rebuilds into, made on first sight.
    fn log(&mut self, log: LogRef<'_>) -> &mut Rebuilt {
        let (inbox, name) = match log {
            LogRef::Inbox(name) => (true, name),
            LogRef::Room(name) => (false, name),
        };
        let known = if inbox { &self.inboxes } else { &self.rooms }.contains_key(name);
        let key = (!known).then(|| self.name(name));
        let map = if inbox { &mut self.inboxes } else { &mut self.rooms };
        if let Some(key) = key {
            map.insert(key, Rebuilt::default());
        }
        map.get_mut(name).expect("inserted")
    }
}

/// One recovered log, for the store to load.
#[derive(Debug)]
pub struct RecoveredLog {
    /// The log.
    pub log: LogKey,
    /// Its epoch and last sequence number.
    pub pos: Position,
    /// Its messages in order, with `at` rebuilt from the wall clock and `acked` resolved.
    pub records: Vec<Record>,
    /// For an inbox: the sequence numbers among `records` still in the offline queue.
    pub offline: Vec<u64>,
}

impl Recovery {
    /// Nothing read yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// What has been read so far.
    pub fn read(&self) -> Read {
        self.read
    }

    /// Reads one segment; returns how many of its bytes are records. What follows them
    /// is either zeros to the end, a preallocated segment's space not yet written (a
    /// clean end), or a damaged tail, which is counted as cut (the caller truncates the
    /// file there before appending to it).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Fed {
        let total = bytes.len();
        loop {
            match read_record(bytes) {
                Ok(None) => {
                    return Fed {
                        good: total,
                        cut: false,
                    };
                }
                Ok(Some((entry, len))) => {
                    self.apply(entry);
                    self.read.records += 1;
                    self.read.bytes += len as u64;
                    bytes = &bytes[len..];
                }
                Err(_) => {
                    let good = total - bytes.len();
                    if all_zero(bytes) {
                        return Fed { good, cut: false };
                    }
                    self.read.cut_segments += 1;
                    self.read.cut_bytes += bytes.len() as u64;
                    return Fed { good, cut: true };
                }
            }
        }
    }

    fn apply(&mut self, entry: Entry<'_>) {
        match entry {
            Entry::Message {
                log,
                seq,
                wall_ms,
                offline,
                acked,
                sender,
                text,
            } => {
                let sender = sender.map(|(user, id)| (self.name(user), id));
                let rebuilt = self.log(log);
                rebuilt.pos.seq = rebuilt.pos.seq.max(seq);
                match rebuilt.messages.entry(seq) {
                    std::collections::btree_map::Entry::Vacant(vacant) => {
                        vacant.insert(Held {
                            wall_ms,
                            offline,
                            acked,
                            sender: sender.map(|(user, id)| Sender {
                                user,
                                id: id.map(ClientId::from_json_text),
                            }),
                            frame: SharedFrame::text(text),
                        });
                    }
                    std::collections::btree_map::Entry::Occupied(mut occupied) => {
                        // A later copy (compaction) states the offline flag as of its
                        // writing.
                        let held = occupied.get_mut();
                        held.offline = offline;
                        held.acked |= acked;
                    }
                }
            }
            Entry::Position { log, pos } => {
                let rebuilt = self.log(log);
                if rebuilt.pos.epoch != pos.epoch {
                    // A new life of the log: the previous one's messages are gone.
                    rebuilt.messages.clear();
                    rebuilt.pos = pos;
                } else {
                    rebuilt.pos.seq = rebuilt.pos.seq.max(pos.seq);
                }
            }
            Entry::Ack { user, seq } => {
                if let Some(held) = self.inboxes.get_mut(user).and_then(|l| l.messages.get_mut(&seq)) {
                    held.acked = true;
                }
            }
            Entry::Take { user, seq } => {
                let taken = match self.taken.get_mut(user) {
                    Some(taken) => taken,
                    None => {
                        let key = self.name(user);
                        self.taken.entry(key).or_insert(0)
                    }
                };
                *taken = (*taken).max(seq);
            }
        }
    }

    /// The logs rebuilt, with each message's instant computed by `clock`. A log that
    /// never had a position record (its epoch record was in a cut part) keeps epoch 0,
    /// which the store replaces with a fresh epoch.
    pub fn finish(self, clock: &WallClock) -> (Vec<RecoveredLog>, Read) {
        let Self {
            inboxes,
            rooms,
            taken,
            read,
            ..
        } = self;
        let mut out = Vec::with_capacity(inboxes.len() + rooms.len());
        let logs = (inboxes.into_iter().map(|(k, r)| (LogKey::Inbox(k), r)))
            .chain(rooms.into_iter().map(|(k, r)| (LogKey::Room(k), r)));
        for (log, rebuilt) in logs {
            let taken_upto = match &log {
                LogKey::Inbox(user) => taken.get(user).copied().unwrap_or(0),
                LogKey::Room(_) => u64::MAX,
            };
            let mut offline = Vec::new();
            let records = rebuilt
                .messages
                .into_iter()
                .map(|(seq, held)| {
                    if held.offline && !held.acked && seq > taken_upto {
                        offline.push(seq);
                    }
                    Record {
                        seq,
                        at: clock.instant(held.wall_ms),
                        frame: held.frame,
                        sender: held.sender,
                        acked: held.acked,
                    }
                })
                .collect();
            out.push(RecoveredLog {
                log,
                pos: rebuilt.pos,
                records,
                offline,
            });
        }
        (out, read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::MsgLimits;
    use crate::msg::store::{Acked, MemStore, Store};

    fn clock() -> (Instant, WallClock) {
        let now = Instant::now();
        (now, WallClock::new(now, SystemTime::now()))
    }

    fn rec(seq: u64, at: Instant, text: &str, sender: Option<(&str, Option<&str>)>) -> Record {
        Record {
            seq,
            at,
            frame: SharedFrame::text(text),
            sender: sender.map(|(u, id)| Sender {
                user: u.into(),
                id: id.map(ClientId::from_json_text),
            }),
            acked: false,
        }
    }

    /// One of each record kind, with long and short frames (2- and 4-byte headers).
    fn sample() -> (Vec<u8>, Instant, WallClock) {
        let (now, clock) = clock();
        let mut e = Encoder::new(0);
        let bob = LogKey::Inbox("bob".into());
        let room = LogKey::Room("lobby".into());
        e.position(&bob, Position { epoch: 77, seq: 0 });
        e.message(
            &bob,
            &rec(1, now, "{\"m\":1}", Some(("alice", Some("\"x1\"")))),
            clock.ms(now),
            true,
        );
        e.message(
            &bob,
            &rec(2, now, &"y".repeat(300), Some(("alice", None))),
            clock.ms(now),
            true,
        );
        e.position(&room, Position { epoch: 5, seq: 0 });
        e.message(&room, &rec(1, now, "hi", None), clock.ms(now), false);
        e.ack("bob", 1);
        e.take_offline("bob", 1);
        let bytes = e.take(Vec::new());
        assert_eq!(e.end(), bytes.len() as u64);
        assert_eq!(e.records(), 7);
        (bytes, now, clock)
    }

    #[test]
    fn records_round_trip() {
        let (bytes, _, _) = sample();
        let mut at = &bytes[..];
        let mut entries = Vec::new();
        while let Some((entry, len)) = read_record(at).unwrap() {
            entries.push(entry);
            at = &at[len..];
        }
        assert_eq!(entries.len(), 7);
        assert_eq!(
            entries[1],
            Entry::Message {
                log: LogRef::Inbox("bob"),
                seq: 1,
                wall_ms: match entries[1] {
                    Entry::Message { wall_ms, .. } => wall_ms,
                    _ => unreachable!(),
                },
                offline: true,
                acked: false,
                sender: Some(("alice", Some("\"x1\""))),
                text: "{\"m\":1}",
            }
        );
        assert!(matches!(&entries[2], Entry::Message { text, sender: Some(("alice", None)), .. } if text.len() == 300));
        assert_eq!(entries[5], Entry::Ack { user: "bob", seq: 1 });
        assert_eq!(entries[6], Entry::Take { user: "bob", seq: 1 });
    }

    #[test]
    fn recovery_resolves_epochs_acks_and_takes() {
        let (bytes, _, clock) = sample();
        let mut recovery = Recovery::new();
        assert_eq!(recovery.feed(&bytes).good, bytes.len());
        let (mut logs, read) = recovery.finish(&clock);
        assert_eq!((read.records, read.cut_segments), (7, 0));
        logs.sort_by_key(|l| matches!(l.log, LogKey::Room(_)));
        let bob = &logs[0];
        assert_eq!(bob.pos, Position { epoch: 77, seq: 2 });
        assert_eq!(
            bob.records.iter().map(|r| (r.seq, r.acked)).collect::<Vec<_>>(),
            [(1, true), (2, false)]
        );
        assert_eq!(bob.offline, [2], "1 was taken (and acked); 2 is still queued");
        assert_eq!(
            bob.records[0].sender.as_ref().unwrap().id.as_ref().unwrap().as_json(),
            "\"x1\""
        );
        assert_eq!(bob.records[1].frame, SharedFrame::text(&"y".repeat(300)));
        assert_eq!(logs[1].pos, Position { epoch: 5, seq: 1 });

        // A new epoch for a log forgets the previous life's messages.
        let mut e = Encoder::new(0);
        e.position(&LogKey::Inbox("bob".into()), Position { epoch: 78, seq: 0 });
        let mut recovery = Recovery::new();
        recovery.feed(&bytes);
        recovery.feed(&e.take(Vec::new()));
        let (logs, _) = recovery.finish(&clock);
        let bob = logs.iter().find(|l| l.log == LogKey::Inbox("bob".into())).unwrap();
        assert_eq!((bob.pos, bob.records.len()), (Position { epoch: 78, seq: 0 }, 0));
    }

    /// A torn tail at every byte offset: recovery keeps exactly the whole records
    /// before the cut, and says how many bytes are good.
    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_record_at_every_offset() {
        let (bytes, _, _) = sample();
        let mut ends = vec![0];
        let mut at = 0;
        while let Some((_, len)) = read_record(&bytes[at..]).unwrap() {
            at += len;
            ends.push(at);
        }
        for cut in 0..=bytes.len() {
            // Then as a preallocated segment holds it: zeros after what was written.
            for padding in [0, 1, 7, 5000] {
                let mut segment = bytes[..cut].to_vec();
                segment.resize(cut + padding, 0);
                let mut recovery = Recovery::new();
                let fed = recovery.feed(&segment);
                // A record whose unwritten rest is zeros in the original too reads
                // back whole: it is the same bytes.
                let same = |e: usize| e <= cut || (e <= cut + padding && bytes[cut..e].iter().all(|&b| b == 0));
                let whole = ends.iter().rposition(|&e| same(e)).unwrap();
                let at = format!("cut at {cut}, {padding} zeros after");
                assert_eq!(fed.good, ends[whole], "{at}");
                assert_eq!(recovery.read().records, whole as u64, "{at}");
                // A torn record is damage unless what was written of it is zeros too.
                let torn = bytes[fed.good..cut.max(fed.good)].iter().any(|&b| b != 0);
                assert_eq!(fed.cut, torn, "{at}");
                assert_eq!(recovery.read().cut_segments, u64::from(torn), "{at}");
            }
        }
    }

    /// Zeros after the records are a preallocated segment's unwritten space, not damage;
    /// anything else after them is.
    #[test]
    fn zeros_after_the_records_are_a_clean_end_and_anything_else_is_a_cut() {
        let (bytes, _, _) = sample();
        let mut padded = bytes.clone();
        padded.resize(bytes.len() + 64 * 1024, 0);
        let records = |cut| Fed { good: bytes.len(), cut };
        let mut recovery = Recovery::new();
        assert_eq!(recovery.feed(&padded), records(false));
        assert_eq!(recovery.read().cut_bytes, 0);
        for at in [bytes.len(), bytes.len() + 4095, bytes.len() + 4096, padded.len() - 1] {
            let mut stray = padded.clone();
            stray[at] = 1;
            let mut recovery = Recovery::new();
            assert_eq!(recovery.feed(&stray), records(true), "stray byte at {at}");
            assert_eq!(recovery.read().cut_bytes, (padded.len() - bytes.len()) as u64);
        }
    }

    /// One flipped bit anywhere: the damaged record and everything after it in the
    /// segment are cut, everything before is kept, nothing panics.
    #[test]
    fn a_corrupt_byte_anywhere_cuts_from_its_record_on() {
        let (bytes, _, clock) = sample();
        let mut ends = vec![0];
        let mut at = 0;
        while let Some((_, len)) = read_record(&bytes[at..]).unwrap() {
            at += len;
            ends.push(at);
        }
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut damaged = bytes.clone();
                damaged[i] ^= bit;
                let mut recovery = Recovery::new();
                let good = recovery.feed(&damaged).good;
                let record_start = ends[ends.iter().rposition(|&e| e <= i).unwrap()];
                assert_eq!(good, record_start, "byte {i} bit {bit:#x}");
                let _ = recovery.finish(&clock);
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let (_, clock) = clock();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let mut recovery = Recovery::new();
            assert!(recovery.feed(&bytes).good <= bytes.len());
            let _ = recovery.finish(&clock);
        }
    }

    #[test]
    fn wall_clock_conversion_round_trips_to_the_millisecond() {
        let (now, clock) = clock();
        for offset in [0u64, 1, 999, 3_600_000] {
            let past = now - Duration::from_millis(offset);
            let back = clock.instant(clock.ms(past));
            assert!(back.max(past) - back.min(past) < Duration::from_millis(1), "{offset}");
        }
        let future = now + Duration::from_secs(5);
        assert_eq!(clock.ms(future), clock.ms(now) + 5000);
        assert_eq!(clock.instant(clock.ms(future)), now, "the future is now");
    }

    fn limits() -> MsgLimits {
        MsgLimits {
            history_max_messages: 3,
            offline_max_messages: 10,
            ..MsgLimits::default()
        }
    }

    /// What a durable store journals brings the same state back into a fresh store:
    /// positions, history under its limits, the offline queue without what was taken
    /// or acked, acks.
    #[test]
    fn a_durable_store_comes_back_from_its_journal() {
        let (now, clock) = clock();
        let mut store = MemStore::durable(&limits(), 0, clock);
        let carol: Key = "carol".into();
        let inbox = LogKey::Inbox(carol.clone());
        let pos = store.start_position(&inbox, Position { epoch: 9, seq: 0 });
        assert_eq!(pos, Position { epoch: 9, seq: 0 });
        for seq in 1..=5 {
            let r = rec(seq, now, &format!("m{seq}"), Some(("dave", None)));
            store.offline_push(&carol, r.clone(), now);
            store.append(&inbox, r, now);
        }
        assert!(matches!(store.ack(&carol, 5), Acked::First(Some(_))));
        let end = store.journal_end();
        let bytes = store.journal_mut().unwrap().encoder.take(Vec::new());
        assert_eq!(end, bytes.len() as u64);

        let mut recovery = Recovery::new();
        recovery.feed(&bytes);
        let (logs, _) = recovery.finish(&clock);
        let mut back = MemStore::durable(&limits(), end, clock);
        let loaded = back.load(logs, now);
        assert_eq!((loaded.logs, loaded.history, loaded.offline), (1, 3, 4));
        assert_eq!(
            back.start_position(&inbox, Position { epoch: 1, seq: 0 }),
            Position { epoch: 9, seq: 5 }
        );
        assert_eq!(back.journal_end(), end, "a recovered position is not written again");
        assert_eq!(back.ack(&carol, 5), Acked::Again);
        let mut queued = Vec::new();
        back.offline_take(&carol, now, &mut queued);
        assert_eq!(queued.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(back.journal_end() > end, "the take is journaled");
    }

    /// A log recovered at start that nobody has touched since is still restated by a
    /// compaction (else deleting the old segments would lose it), and its position is
    /// forgotten only once it holds nothing and has been idle past the history age.
    #[test]
    fn an_unclaimed_recovered_log_survives_a_compaction() {
        let (bytes, now, clock) = sample();
        let mut recovery = Recovery::new();
        recovery.feed(&bytes);
        let (logs, _) = recovery.finish(&clock);
        let mut store = MemStore::durable(&limits(), bytes.len() as u64, clock);
        store.load(logs, now);
        store.restate_unclaimed();
        let restated = store.journal_mut().unwrap().encoder.take(Vec::new());
        let mut recovery = Recovery::new();
        recovery.feed(&restated);
        let (mut logs, _) = recovery.finish(&clock);
        logs.sort_by_key(|l| matches!(l.log, LogKey::Room(_)));
        assert_eq!(logs[0].pos, Position { epoch: 77, seq: 2 });
        assert_eq!(logs[0].records.len(), 2);
        assert_eq!(logs[1].pos, Position { epoch: 5, seq: 1 });
        // Idle past the history age with its messages (and queue) aged out: forgotten.
        let l = limits();
        let later = now + l.history_max_age.max(l.offline_max_age) + Duration::from_secs(1);
        store.sweep(later);
        let mut e = Encoder::new(0);
        std::mem::swap(&mut store.journal_mut().unwrap().encoder, &mut e);
        store.restate_unclaimed();
        assert_eq!(store.journal_mut().unwrap().encoder.pending(), 0);
    }

    /// A compaction's restatement alone rebuilds the same state as the whole journal.
    #[test]
    fn a_restatement_replaces_the_journal_before_it() {
        let (now, clock) = clock();
        let mut store = MemStore::durable(&limits(), 0, clock);
        let erin: Key = "erin".into();
        let inbox = LogKey::Inbox(erin.clone());
        store.start_position(&inbox, Position { epoch: 3, seq: 0 });
        for seq in 1..=6 {
            let r = rec(seq, now, "x", None);
            store.offline_push(&erin, r.clone(), now);
            store.append(&inbox, r, now);
        }
        store.ack(&erin, 6);
        let _ = store.journal_mut().unwrap().encoder.take(Vec::new());
        store.restate(&inbox, Position { epoch: 3, seq: 6 });
        let restated = store.journal_mut().unwrap().encoder.take(Vec::new());
        let mut recovery = Recovery::new();
        recovery.feed(&restated);
        let (logs, _) = recovery.finish(&clock);
        assert_eq!(logs[0].pos, Position { epoch: 3, seq: 6 });
        // History holds 4..=6; the queue 1..=5 (6 was acked), older ones written too.
        assert_eq!(
            logs[0].records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        assert_eq!(logs[0].offline, [1, 2, 3, 4, 5]);
        let mut back = MemStore::durable(&limits(), 0, clock);
        let loaded = back.load(logs, now);
        assert_eq!((loaded.history, loaded.offline), (3, 5));
    }
}
