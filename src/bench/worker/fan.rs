//! Fan-out traffic in a bench worker: subscribers that join a room and time every
//! `room_msg`, publishers that publish to it at a fixed rate.
//!
//! Connection numbers below [`FanoutPlan::publishers`] are publishers, the others
//! subscribers. Each connection waits for the server's `welcome`; a subscriber then sends
//! `join` and is a member once `joined` arrives (its `at.seq` is where the room's order
//! check starts); a publisher joins nothing and, once the coordinator opens the traffic
//! window, sends its k-th publish at `send_from + k / rate` (message number
//! `n = id + k × publishers`, unique over the run). Each publish carries its send time
//! (ns on the clock all workers share) in `body.t`, so a delivery's latency is the read's
//! time minus `t`, whatever worker sent it.
//!
//! Figures: deliveries counted in the window (throughput) and the latency of every
//! delivery of a message published in the window (whenever it arrives, so a backlog shows
//! as latency, not as a lost count); per subscriber, `seq` must rise by one (gaps and
//! repeats counted); per message, the latest delivery's latency (publish to last
//! delivery) from a table indexed by `n`, merged over workers by taking the maximum.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{Busy, Slot, State, Worker, bump, histogram};
use crate::bench::wire::{self, Incoming, SeqCheck, SeqVerdict};
use crate::proto::connection::Message;
use crate::slab::Key;

/// Publishes in flight (sent, not acked) remembered per publisher; beyond, the oldest
/// is forgotten and counted as unacked.
const MAX_UNACKED: usize = 65_536;
/// Publishes one publisher sends per turn at most, when it fell behind its schedule.
const MAX_PUBLISHES_PER_TURN: u64 = 256;
/// Messages whose last delivery is tracked at most (16 bytes each per worker).
pub const MAX_TRACKED_MESSAGES: u64 = 4_000_000;

/// Fan-out traffic of a run.
#[derive(Clone, Debug)]
pub struct FanoutPlan {
    /// Connections numbered below this are publishers.
    pub publishers: u64,
    /// Publishes per second each publisher sends.
    pub rate_per_publisher: f64,
    /// The room's name as a JSON string (quotes included).
    pub room_json: Arc<str>,
    /// Bytes of each publish frame's JSON text (padded).
    pub size: usize,
    /// `?user=PREFIX{pub,sub}-N` on each upgrade (the server's `--auth-mode none`), or
    /// `None` (a token names the user).
    pub user_prefix: Option<Arc<str>>,
    /// Entries of the last-delivery table (message numbers beyond are not tracked).
    pub tracked_messages: u64,
    /// User to user instead (`wsgate bench direct`): every connection is a publisher
    /// that `send`s to its partner (connection `id ^ 1`, user `<prefix>u-<id ^ 1>`) and
    /// times the `msg`s it receives; `publishers` is then every connection.
    pub direct: bool,
}

/// A fan-out connection's state.
#[derive(Debug, Default)]
pub(super) struct FanConn {
    stage: Stage,
    /// Subscribers: the room's order.
    seq: SeqCheck,
    /// Publishers: publishes sent so far.
    next_k: u64,
    /// Publishers: `(n, sent ns)` of publishes not acked yet, oldest first.
    unacked: VecDeque<(u64, u64)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Stage {
    #[default]
    AwaitWelcome,
    Joining,
    Member,
    Publisher,
}

/// Fan-out figures of one worker (or, merged, of the run).
#[derive(Debug, Clone)]
pub struct FanoutStats {
    /// `welcome`s received.
    pub welcomed: u64,
    /// `joined`s received.
    pub joined: u64,
    /// `room_msg`s received in all.
    pub deliveries_total: u64,
    /// `room_msg`s received inside the window (throughput).
    pub deliveries_in_window: u64,
    /// Deliveries of messages published inside the window, whenever received.
    pub deliveries_of_window: u64,
    /// Publish (send time in the body) to delivery, for messages published in the window.
    pub delivery_ns: Histogram<u64>,
    /// Deliveries without a readable `body.t` (not the bench's, or malformed).
    pub untimed: u64,
    /// Room sequence numbers skipped, summed over subscribers.
    pub gaps: u64,
    /// Room sequence numbers not above the last one (repeats, reordering).
    pub backwards: u64,
    /// `room_msg`s on a connection that is not a member (yet).
    pub not_member: u64,
    /// Publishes sent in all.
    pub published_total: u64,
    /// Publishes sent inside the window.
    pub published_in_window: u64,
    /// `ack`s received for publishes in all.
    pub acked_total: u64,
    /// Publish to ack, for publishes sent in the window.
    pub ack_ns: Histogram<u64>,
    /// Publishes never acked (forgotten or still waiting when the connection ended).
    pub unacked: u64,
    /// `error` answers by code.
    pub errors: BTreeMap<String, u64>,
    /// Other server messages by type (and `bad_message` for non-JSON).
    pub unexpected: BTreeMap<String, u64>,
    /// Per message number `n` (published in the window): the latest delivery's latency,
    /// the publish time and the number of deliveries.
    pub last: Vec<LastDelivery>,
}

/// One message's deliveries, as [`FanoutStats::last`] tracks them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastDelivery {
    /// The latest delivery's latency, ns.
    pub ns: u64,
    /// The publish time (`body.t`, ns on `CLOCK_MONOTONIC`).
    pub t: u64,
    /// Deliveries seen.
    pub count: u32,
}

impl FanoutStats {
    /// Nothing counted.
    pub fn new() -> Self {
        Self {
            welcomed: 0,
            joined: 0,
            deliveries_total: 0,
            deliveries_in_window: 0,
            deliveries_of_window: 0,
            delivery_ns: histogram(),
            untimed: 0,
            gaps: 0,
            backwards: 0,
            not_member: 0,
            published_total: 0,
            published_in_window: 0,
            acked_total: 0,
            ack_ns: histogram(),
            unacked: 0,
            errors: BTreeMap::new(),
            unexpected: BTreeMap::new(),
            last: Vec::new(),
        }
    }

    /// Adds another worker's figures.
    pub fn merge(&mut self, o: &Self) {
        self.welcomed += o.welcomed;
        self.joined += o.joined;
        self.deliveries_total += o.deliveries_total;
        self.deliveries_in_window += o.deliveries_in_window;
        self.deliveries_of_window += o.deliveries_of_window;
        self.delivery_ns
            .add(&o.delivery_ns)
            .expect("histograms with the same bounds merge");
        self.untimed += o.untimed;
        self.gaps += o.gaps;
        self.backwards += o.backwards;
        self.not_member += o.not_member;
        self.published_total += o.published_total;
        self.published_in_window += o.published_in_window;
        self.acked_total += o.acked_total;
        self.ack_ns
            .add(&o.ack_ns)
            .expect("histograms with the same bounds merge");
        self.unacked += o.unacked;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.unexpected {
            *self.unexpected.entry(k.clone()).or_default() += v;
        }
        if self.last.len() < o.last.len() {
            self.last.resize(o.last.len(), LastDelivery::default());
        }
        for (mine, theirs) in self.last.iter_mut().zip(&o.last) {
            mine.ns = mine.ns.max(theirs.ns);
            mine.t = mine.t.max(theirs.t);
            mine.count += theirs.count;
        }
    }

    /// Records a delivery of message `n`, published at `t`, `latency_ns` after it.
    pub fn record_delivery(&mut self, n: Option<u64>, t: u64, latency_ns: u64, tracked: u64) {
        self.deliveries_of_window += 1;
        self.delivery_ns.saturating_record(latency_ns.max(1));
        if let Some(n) = n.filter(|&n| n < tracked) {
            let n = n as usize;
            if self.last.len() <= n {
                self.last.resize(
                    (n + 1).next_power_of_two().min(tracked as usize),
                    LastDelivery::default(),
                );
            }
            let entry = &mut self.last[n];
            entry.ns = entry.ns.max(latency_ns);
            entry.t = t;
            entry.count += 1;
        }
    }

    /// Publish to last delivery, over the messages delivered at least once, and how
    /// many of them reached `members` subscribers.
    pub fn last_delivery(&self, members: u64) -> (Histogram<u64>, u64) {
        let mut h = histogram();
        let mut complete = 0;
        for last in &self.last {
            if last.count > 0 {
                h.saturating_record(last.ns.max(1));
                complete += u64::from(u64::from(last.count) >= members);
            }
        }
        (h, complete)
    }

    /// `[n, t, latest latency ns, deliveries]` of every message delivered at least
    /// once, by `n`: what runs of several bench processes merge (`scripts/fleet-fanout.py`).
    pub fn per_publish(&self) -> Vec<[u64; 4]> {
        (0u64..)
            .zip(&self.last)
            .filter(|(_, l)| l.count > 0)
            .map(|(n, l)| [n, l.t, l.ns, u64::from(l.count)])
            .collect()
    }
}

impl Default for FanoutStats {
    fn default() -> Self {
        Self::new()
    }
}

/// The upgrade request with `user=PREFIX{pub,sub}-ID` added to the target's query.
pub(crate) fn request_with_user(out: &mut Vec<u8>, prefix: &str, user_prefix: &str, role: &str, id: u64) {
    // The prefix starts `GET <target> HTTP/1.1\r\n`.
    let split = prefix.find(" HTTP/1.1\r\n").unwrap_or(prefix.len());
    let target = &prefix[..split];
    out.extend_from_slice(target.as_bytes());
    out.push(if target.contains('?') { b'&' } else { b'?' });
    out.extend_from_slice(b"user=");
    out.extend_from_slice(user_prefix.as_bytes());
    out.extend_from_slice(role.as_bytes());
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(&prefix.as_bytes()[split..]);
}

/// Reads one server message: answers the bench acts on are queued in `events`; errors,
/// other types and garbage are counted at once.
pub(super) fn classify(
    message: &Message<'_>,
    direct: bool,
    events: &mut Vec<Incoming<'static>>,
    stats: &mut FanoutStats,
) {
    let incoming = match message {
        Message::Text(text) => wire::read_server(text.as_bytes()),
        Message::Binary(_) => Incoming::Bad,
    };
    match incoming {
        Incoming::Welcome => events.push(Incoming::Welcome),
        Incoming::Joined { seq } => events.push(Incoming::Joined { seq }),
        Incoming::RoomMsg { seq, t, n } => events.push(Incoming::RoomMsg { seq, t, n }),
        Incoming::Ack { id, seq } => events.push(Incoming::Ack { id, seq }),
        Incoming::Msg { seq, t, n } if direct => events.push(Incoming::Msg { seq, t, n }),
        Incoming::Msg { .. } => bump(&mut stats.unexpected, "msg"),
        Incoming::Error { code } => bump(&mut stats.errors, code),
        Incoming::Other(kind) => bump(&mut stats.unexpected, kind),
        Incoming::Bad => bump(&mut stats.unexpected, "bad_message"),
    }
}

impl Worker {
    fn fan_conn(&mut self, entry: Key) -> Option<&mut FanConn> {
        self.slots[entry].busy.as_deref_mut().and_then(|b| b.fan.as_mut())
    }

    /// Acts on the messages [`classify`] queued for `entry`.
    pub(super) fn on_fan_events(&mut self, entry: Key) {
        let Some(plan) = self.plan.fanout.clone() else { return };
        let events = std::mem::take(&mut self.fan_events);
        let (now_ns, from, until) = (self.now_ns, self.measure_from_ns, self.measure_until_ns);
        for event in &events {
            if !self.slots.contains(entry) {
                break;
            }
            let id = self.slots[entry].id;
            let stats = &mut self.report.fanout;
            match *event {
                Incoming::Welcome => {
                    stats.welcomed += 1;
                    let publisher = id < plan.publishers;
                    let Some(conn) = self.fan_conn(entry) else { continue };
                    if conn.stage != Stage::AwaitWelcome {
                        continue;
                    }
                    if publisher {
                        conn.stage = Stage::Publisher;
                        self.publishers.push(entry);
                    } else {
                        conn.stage = Stage::Joining;
                        let mut text = Vec::with_capacity(64);
                        wire::write_join(&mut text, &plan.room_json);
                        self.send_text(entry, &text);
                    }
                }
                Incoming::Joined { seq } => {
                    let Some(conn) = self.fan_conn(entry) else { continue };
                    if conn.stage == Stage::Joining {
                        conn.stage = Stage::Member;
                        conn.seq = SeqCheck { last: seq.unwrap_or(0) };
                        self.report.fanout.joined += 1;
                    }
                }
                Incoming::RoomMsg { seq, t, n } | Incoming::Msg { seq, t, n } => {
                    stats.deliveries_total += 1;
                    if now_ns >= from && now_ns < until {
                        stats.deliveries_in_window += 1;
                    }
                    match t {
                        Some(t) if t >= from && t < until => {
                            stats.record_delivery(n, t, now_ns.saturating_sub(t), plan.tracked_messages);
                        }
                        Some(_) => {}
                        None => stats.untimed += 1,
                    }
                    let Some(conn) = self.slots[entry].busy.as_deref_mut().and_then(|b| b.fan.as_mut()) else {
                        continue;
                    };
                    if plan.direct && conn.stage == Stage::Publisher && conn.seq.last == 0 {
                        // The inbox may hold earlier runs' messages: the first one
                        // received is where the order check starts.
                        conn.seq.last = seq.unwrap_or(1).saturating_sub(1);
                    }
                    if conn.stage != Stage::Member && !(plan.direct && conn.stage == Stage::Publisher) {
                        stats.not_member += 1;
                    } else if let Some(seq) = seq {
                        match conn.seq.observe(seq) {
                            SeqVerdict::InOrder => {}
                            SeqVerdict::Gap { missing } => stats.gaps += missing,
                            SeqVerdict::Backwards => stats.backwards += 1,
                        }
                    }
                }
                Incoming::Ack { id: Some(n), .. } => {
                    let Some(conn) = self.slots[entry].busy.as_deref_mut().and_then(|b| b.fan.as_mut()) else {
                        continue;
                    };
                    while conn.unacked.front().is_some_and(|&(m, _)| m < n) {
                        conn.unacked.pop_front();
                        stats.unacked += 1;
                    }
                    if let Some(&(m, sent)) = conn.unacked.front()
                        && m == n
                    {
                        conn.unacked.pop_front();
                        stats.acked_total += 1;
                        if sent >= from && sent < until {
                            stats.ack_ns.saturating_record(now_ns.saturating_sub(sent).max(1));
                        }
                    } else {
                        bump(&mut stats.unexpected, "ack_unknown_id");
                    }
                }
                Incoming::Ack { id: None, .. } => bump(&mut stats.unexpected, "ack_without_id"),
                _ => {}
            }
        }
        self.fan_events = events;
        self.fan_events.clear();
    }

    /// Sends one text message on an open connection.
    fn send_text(&mut self, entry: Key, text: &[u8]) {
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let ok = self.slots[entry].ws.write_message(&mut out, true, text).is_ok();
        if ok {
            self.send(entry, &out);
        }
        self.scratch = out;
    }

    /// Sends the publishes due by now on this worker's publishers.
    pub(super) fn publish_due(&mut self) {
        let Some(plan) = self.plan.fanout.clone() else { return };
        let send_from = self.control.send_from_ns.load(std::sync::atomic::Ordering::Acquire);
        if self.closing || self.now_ns < send_from || self.now_ns >= self.measure_until_ns {
            return;
        }
        let rate = plan.rate_per_publisher;
        let mut i = 0;
        while i < self.publishers.len() {
            let entry = self.publishers[i];
            if !self.slots.contains(entry) || self.slots[entry].state != State::Open {
                self.publishers.swap_remove(i);
                continue;
            }
            i += 1;
            let elapsed = (self.now_ns - send_from) as f64 / 1e9;
            let mut out = std::mem::take(&mut self.scratch);
            out.clear();
            let mut text = Vec::with_capacity(plan.size + 64);
            let (from, until) = (self.measure_from_ns, self.measure_until_ns);
            let Slot { ws, busy, id, .. } = &mut self.slots[entry];
            let Some(conn) = busy.as_deref_mut().and_then(|b: &mut Busy| b.fan.as_mut()) else {
                self.scratch = out;
                continue;
            };
            let stats = &mut self.report.fanout;
            // Publisher i's k-th message is due at (k + i / P) / rate: the publishers
            // take turns, so together they send evenly at the total rate, not in bursts.
            let scheduled = elapsed * rate - phase(*id, plan.publishers);
            let due = if scheduled < 0.0 { 0 } else { scheduled as u64 + 1 };
            let mut budget = MAX_PUBLISHES_PER_TURN;
            while conn.next_k < due && budget > 0 {
                budget -= 1;
                let n = *id + conn.next_k * plan.publishers;
                conn.next_k += 1;
                let t = super::mono_ns();
                text.clear();
                if plan.direct {
                    let partner = *id ^ 1;
                    let prefix = plan.user_prefix.as_deref().unwrap_or("");
                    wire::write_send(&mut text, &format!("\"{prefix}u-{partner}\""), n, t);
                } else {
                    wire::write_publish(&mut text, &plan.room_json, n, t, plan.size);
                }
                if ws.write_message(&mut out, true, &text).is_err() {
                    break;
                }
                if conn.unacked.len() >= MAX_UNACKED {
                    conn.unacked.pop_front();
                    stats.unacked += 1;
                }
                conn.unacked.push_back((n, t));
                stats.published_total += 1;
                if t >= from && t < until {
                    stats.published_in_window += 1;
                }
            }
            if !out.is_empty() {
                self.send(entry, &out);
            }
            self.scratch = out;
        }
    }

    /// How long until this worker's next publish is due, when it has publishers.
    pub(super) fn next_publish_in(&self) -> Option<Duration> {
        let plan = self.plan.fanout.as_ref()?;
        let send_from = self.control.send_from_ns.load(std::sync::atomic::Ordering::Acquire);
        if self.publishers.is_empty() || send_from == u64::MAX || self.now_ns >= self.measure_until_ns {
            return None;
        }
        let next = self
            .publishers
            .iter()
            .filter_map(|e| {
                let slot = self.slots.get(*e)?;
                let conn = slot.busy.as_deref()?.fan.as_ref()?;
                Some(conn.next_k as f64 + phase(slot.id, plan.publishers))
            })
            .fold(f64::INFINITY, f64::min);
        if !next.is_finite() {
            return None;
        }
        let due_ns = send_from + (next / plan.rate_per_publisher * 1e9) as u64;
        Some(Duration::from_nanos(due_ns.saturating_sub(self.now_ns)))
    }

    /// A fan-out connection leaves `Open`: its unacked publishes are counted.
    pub(super) fn leave_open_fan(&mut self, entry: Key) {
        if let Some(conn) = self.fan_conn(entry) {
            let left = conn.unacked.len() as u64;
            conn.unacked.clear();
            self.report.fanout.unacked += left;
        }
    }
}

/// Publisher `id`'s offset in its schedule, in periods: `id / publishers`, in [0, 1).
fn phase(id: u64, publishers: u64) -> f64 {
    (id % publishers.max(1)) as f64 / publishers.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_delivery_is_the_latest_per_message_over_workers() {
        let mut a = FanoutStats::new();
        let mut b = FanoutStats::new();
        a.record_delivery(Some(0), 40, 1_000, 100);
        a.record_delivery(Some(0), 40, 5_000, 100);
        b.record_delivery(Some(0), 40, 3_000, 100);
        b.record_delivery(Some(2), 60, 7_000, 100);
        // Beyond the table: timed, not tracked.
        b.record_delivery(Some(100), 70, 9_000, 100);
        b.record_delivery(None, 80, 9_000, 100);
        a.merge(&b);
        assert_eq!(a.deliveries_of_window, 6);
        assert_eq!(a.delivery_ns.len(), 6);
        let last = |ns, t, count| LastDelivery { ns, t, count };
        assert_eq!(a.last[0], last(5_000, 40, 3));
        assert_eq!(a.last[1], LastDelivery::default());
        assert_eq!(a.last[2], last(7_000, 60, 1));
        assert_eq!(a.per_publish(), [[0, 40, 5_000, 3], [2, 60, 7_000, 1]]);
        let (h, complete) = a.last_delivery(3);
        assert_eq!(h.len(), 2);
        assert_eq!(complete, 1);
        assert!(h.max() >= 7_000 && h.min() <= 5_010);
    }

    #[test]
    fn publishers_take_turns() {
        // Four publishers at 10/s each: together one every 25 ms, not four every 100 ms.
        let mut due: Vec<f64> = (0..4)
            .flat_map(|id| (0..3).map(move |k| (k as f64 + phase(id, 4)) / 10.0))
            .collect();
        due.sort_by(f64::total_cmp);
        for pair in due.windows(2) {
            assert!((pair[1] - pair[0] - 0.025).abs() < 1e-9, "{due:?}");
        }
        assert_eq!(phase(5, 1), 0.0);
    }

    #[test]
    fn requests_name_the_user() {
        let prefix = "GET /ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: ";
        let mut out = Vec::new();
        request_with_user(&mut out, prefix, "b-", "sub-", 17);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /ws?user=b-sub-17 HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: "
        );
        let mut out = Vec::new();
        request_with_user(&mut out, &prefix.replace("/ws", "/ws?a=1"), "", "pub-", 0);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .starts_with("GET /ws?a=1&user=pub-0 HTTP/1.1\r\n")
        );
    }
}
