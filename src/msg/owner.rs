//! The owner side: the state a shard keeps for the users and rooms whose key hashes to
//! it ([`super::owner_of`]), driven by [`MeshMsg`]s and a `now`, deterministic.
//!
//! For a **user** the owner keeps the directory entry (how many connections on which
//! shard: presence, and where inbox messages go), the inbox position (epoch and last
//! sequence number), the inbox history and the offline queue (both in the [`Store`]).
//! For a **room**: the interested shards (how many member connections each has, and how
//! many of them asked for presence events), the members (user → connection count), the
//! room position and its history.
//!
//! Every request is answered by messages to shards, appended to an output list as
//! `(destination shard, message)`; the destination may be this shard. A message is
//! encoded once here and shared by every recipient: a room publish produces one
//! [`MeshMsg::ToRoom`] per interested shard, never one per member.
//!
//! # Sequence numbers and epochs
//!
//! Each inbox and room counts its messages from 1 within an *epoch*, a random-looking
//! non-zero number below 2^53 (JavaScript clients keep it exact) chosen when the owner
//! creates the entry. An entry is forgotten when nothing needs it any more (no
//! connection or member, no offline message, history aged out); a later message
//! creates it afresh with a new epoch, and so does a restart. A client resuming with an
//! old epoch is told to resync; one whose position is in the current epoch gets the
//! messages it missed if the history still holds all of them, else it is told to resync.
//!
//! # Presence
//!
//! A user is online while any shard holds a connection of theirs. A room's members are
//! the distinct users with a connection in it. When a user's first connection joins (or
//! last leaves) a room of at most `presence_event_max_members` members, the members that
//! asked for presence get a join (leave) event; above that size they get the member
//! count instead, at most once per tick.//!
//! # Why one long file
//!
//! The owner is one state machine over one set of tables (users, rooms, positions,
//! store): splitting its handlers across files would split the invariants between them
//! (a directory count changed in one and read in another). Each handler is a method of
//! its own, in the order of [`MeshMsg`]'s variants.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use hashbrown::HashMap;

use super::api::{ApiOp, ApiReply, ApiRequest};
use super::mesh::MeshMsg;
use super::protocol::{self, AckOf, ClientId, Encoding, ErrorCode, ResyncReason};
use super::store::{Acked, LogKey, Record, Sender, Store};
use super::{ConnId, Key, KeyKind, MsgLimits, MsgMetrics, Position, ShardId, UserLimit, UserLimitPolicy, owner_of};
use crate::proto::frame::SharedFrame;
use crate::stamp::Stamp;

/// How often idle entries are looked for and aged history swept (a full pass over the
/// owner's users and rooms).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Connections of one key on one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ShardCount {
    shard: ShardId,
    /// Connections (user entry) or member connections (room entry).
    conns: u32,
    /// Room entries: member connections that asked for presence events.
    watchers: u32,
}

/// Finds or adds `shard` in a short list (a user is on a few shards; a room on at most
/// every shard, and a linear scan of up to a few dozen entries beats a map).
fn count_mut(list: &mut Vec<ShardCount>, shard: ShardId) -> &mut ShardCount {
    let i = match list.iter().position(|c| c.shard == shard) {
        Some(i) => i,
        None => {
            list.push(ShardCount {
                shard,
                conns: 0,
                watchers: 0,
            });
            list.len() - 1
        }
    };
    &mut list[i]
}

/// The fields of a [`MeshMsg::Join`].
struct JoinRequest {
    room: Key,
    user: Key,
    conn: ConnId,
    since: Option<Position>,
    presence: bool,
    id: Option<ClientId>,
    ticket: u32,
}

/// One connection in a user's directory entry: its shard, its handle there, and whether
/// the per-user limit has told its shard to close it for a newer one (it stays listed,
/// so deliveries still reach it, until its disconnect arrives; it no longer counts
/// against the limit). 12 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UserConn {
    pub(crate) shard: ShardId,
    pub(crate) replaced: bool,
    pub(crate) conn: ConnId,
}

/// What [`UserShards::add`] decided under the per-user limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Counted; nothing else to do.
    Admitted,
    /// Counted; the user's oldest connection is to be closed for it (`newest` wins).
    Replacing(UserConn),
    /// Not counted: the user holds its connections and the oldest win. The new
    /// connection is to be closed.
    Refused,
}

/// The connections of one user, oldest first: inline while there is one (nearly
/// always), a list beyond; and while the user has none, since when (what the owner
/// forgets an idle entry by). 16 bytes where a `Vec` cost 24 and a heap block, and an
/// `Instant` beside it 16 more. Each connection is named, so the per-user limit is kept
/// here, in the one place that sees all of a user's connections, and a disconnect
/// removes exactly the connection it names (one already replaced, or refused, is not
/// counted twice). The cluster owner (`cluster::owner`) keeps its node's users in the
/// same.
#[derive(Debug)]
pub(crate) enum UserShards {
    /// No connection since the instant stamped.
    Offline(Stamp),
    One(ShardId, ConnId),
    // A thin pointer: a `Vec` or a boxed slice here would make the enum 24 or 32 bytes.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<UserConn>>),
}

impl Default for UserShards {
    /// Offline since long ago.
    fn default() -> Self {
        Self::Offline(Stamp::EARLIEST)
    }
}

impl UserShards {
    /// No connection anywhere.
    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, Self::Offline(_))
    }

    /// Offline since `at`.
    pub(crate) fn offline_since(at: Instant) -> Self {
        Self::Offline(Stamp::of(at))
    }

    /// How long the user has had no connection at `now` (`None`: online).
    pub(crate) fn idle_for(&self, now: Instant) -> Option<Duration> {
        match self {
            Self::Offline(since) => Some(now.saturating_duration_since(since.instant())),
            _ => None,
        }
    }

    /// Connection `conn` on `shard` opened, under the per-user limit `limit`.
    pub(crate) fn add(&mut self, shard: ShardId, conn: ConnId, limit: UserLimit) -> Admit {
        let new = UserConn {
            shard,
            replaced: false,
            conn,
        };
        let at_limit = limit.max > 0 && self.live() >= limit.max as usize;
        if at_limit && limit.policy == UserLimitPolicy::Oldest {
            return Admit::Refused;
        }
        let list = match self {
            Self::Offline(_) => {
                *self = Self::One(shard, conn);
                return Admit::Admitted;
            }
            Self::One(s, c) => {
                let first = UserConn {
                    shard: *s,
                    replaced: false,
                    conn: *c,
                };
                *self = Self::Many(Box::new(vec![first]));
                let Self::Many(list) = self else { unreachable!() };
                list
            }
            Self::Many(list) => list,
        };
        let mut verdict = Admit::Admitted;
        if at_limit && let Some(oldest) = list.iter_mut().find(|c| !c.replaced) {
            oldest.replaced = true;
            verdict = Admit::Replacing(*oldest);
        }
        list.push(new);
        verdict
    }

    /// Connection `conn` on `shard` closed; `false` if it was not counted (refused by
    /// the limit). The last one leaves the user offline since long ago:
    /// [`UserShards::offline_since`] says when.
    pub(crate) fn remove(&mut self, shard: ShardId, conn: ConnId) -> bool {
        match self {
            Self::Offline(_) => false,
            Self::One(s, c) if (*s, *c) != (shard, conn) => false,
            Self::One(..) => {
                *self = Self::default();
                true
            }
            Self::Many(list) => {
                let Some(i) = list.iter().position(|c| (c.shard, c.conn) == (shard, conn)) else {
                    return false;
                };
                // In order: the first unreplaced one is the oldest.
                list.remove(i);
                match list[..] {
                    [] => *self = Self::default(),
                    [one] if !one.replaced => *self = Self::One(one.shard, one.conn),
                    _ => {}
                }
                true
            }
        }
    }

    /// Connections that count against the per-user limit (not already replaced).
    fn live(&self) -> usize {
        match self {
            Self::Offline(_) => 0,
            Self::One(..) => 1,
            Self::Many(list) => list.iter().filter(|c| !c.replaced).count(),
        }
    }

    /// The shards with connections, each once.
    pub(crate) fn shards(&self) -> impl Iterator<Item = ShardId> + '_ {
        let (one, many) = match self {
            Self::Offline(_) => (None, &[][..]),
            Self::One(s, _) => (Some(*s), &[][..]),
            Self::Many(list) => (None, &list[..]),
        };
        // A user with no cap may hold thousands of connections on a few shards: each
        // shard once, by a bitmap of the first 256 shards (a scan beyond).
        let mut seen = [0u64; 4];
        let firsts = many.iter().enumerate().filter_map(move |(i, c)| {
            let s = usize::from(c.shard);
            let first = match seen.get_mut(s / 64) {
                Some(word) => {
                    let bit = 1u64 << (s % 64);
                    let first = *word & bit == 0;
                    *word |= bit;
                    first
                }
                None => !many[..i].iter().any(|p| p.shard == c.shard),
            };
            first.then_some(c.shard)
        });
        one.into_iter().chain(firsts)
    }

    /// Connections on all shards (those already replaced until they are gone).
    pub(crate) fn connections(&self) -> u64 {
        match self {
            Self::Offline(_) => 0,
            Self::One(..) => 1,
            Self::Many(list) => list.len() as u64,
        }
    }
}

/// What the owner holds for one user.
#[derive(Debug)]
struct UserEntry {
    /// Inbox epoch and the last sequence number given out.
    pos: Position,
    /// Shards with connections of this user (the directory entry), or since when it has
    /// had none (for forgetting the entry).
    shards: UserShards,
}

impl UserEntry {
    fn connections(&self) -> u64 {
        self.shards.connections()
    }
}

/// What the owner holds for one room.
#[derive(Debug)]
struct RoomEntry {
    pos: Position,
    /// Shards with member connections: a publish goes once to each.
    shards: Vec<ShardCount>,
    /// Members: user → member connections.
    users: HashMap<Key, u32>,
    /// The member count last announced to a large room (`u64::MAX`: never).
    announced: u64,
    /// When the last member left.
    idle_since: Instant,
}

impl RoomEntry {
    fn connections(&self) -> u64 {
        self.shards.iter().map(|c| u64::from(c.conns)).sum()
    }

    fn has_watchers(&self) -> bool {
        self.shards.iter().any(|c| c.watchers > 0)
    }
}

/// The owner state of one shard. See the module docs.
#[derive(Debug)]
pub struct Owner<S> {
    shard: ShardId,
    shards: usize,
    limits: MsgLimits,
    store: S,
    users: super::dense::DenseMap<UserEntry>,
    rooms: HashMap<Key, RoomEntry>,
    /// Rooms whose member count changed above the event threshold since the last tick.
    count_dirty: Vec<Key>,
    /// Users with at least one connection (gauge, kept as they come and go).
    online_users: usize,
    /// Rooms with at least one member (gauge).
    occupied_rooms: usize,
    epoch_seed: u64,
    epochs_made: u64,
    last_sweep: Option<Instant>,
    /// Scratch: records read from the store.
    records: Vec<Record>,
    /// Scratch: JSON being encoded.
    buf: Vec<u8>,
    /// Refusals: answers that report no durable change, so they need not wait for the
    /// journal (a full or failing disk must not hold them behind writes that cannot
    /// finish); the per-user limit's closes are among them.
    refusals: Vec<(ShardId, MeshMsg)>,
}

impl<S: Store> Owner<S> {
    /// The owner state of shard `shard` of `shards`. `epoch_seed` makes epochs differ
    /// between runs (the server passes the start time mixed with the shard id; tests a
    /// constant, for determinism).
    pub fn new(shard: ShardId, shards: usize, limits: &MsgLimits, store: S, epoch_seed: u64) -> Self {
        assert!(usize::from(shard) < shards);
        Self {
            shard,
            shards,
            limits: limits.clone(),
            store,
            users: super::dense::DenseMap::new(),
            rooms: HashMap::new(),
            count_dirty: Vec::new(),
            online_users: 0,
            occupied_rooms: 0,
            epoch_seed,
            epochs_made: 0,
            last_sweep: None,
            records: Vec::new(),
            buf: Vec::new(),
            refusals: Vec::new(),
        }
    }

    /// Moves the refusals made since the last call into `out`: they may leave at once,
    /// ahead of answers still waiting for the journal.
    pub fn take_refusals(&mut self, out: &mut Vec<(ShardId, MeshMsg)>) {
        out.append(&mut self.refusals);
    }

    /// Users with an entry here (gauge).
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Rooms with an entry here (gauge).
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Users of this owner with at least one connection (gauge).
    pub fn online_users(&self) -> usize {
        self.online_users
    }

    /// Rooms of this owner with at least one member (gauge).
    pub fn occupied_rooms(&self) -> usize {
        self.occupied_rooms
    }

    /// The store (tests, gauges).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, mutably (the server's journal writer takes its bytes).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Writes every entry's position and stored records into the store's journal again
    /// ([`Store::restate`]): a compaction, after which older journal segments hold
    /// nothing needed.
    pub fn restate_all(&mut self) {
        for (user, entry) in self.users.iter() {
            self.store.restate(&LogKey::Inbox(user.clone()), entry.pos);
        }
        for (room, entry) in &self.rooms {
            self.store.restate(&LogKey::Room(room.clone()), entry.pos);
        }
        self.store.restate_unclaimed();
    }

    fn new_epoch(&mut self) -> u64 {
        self.epochs_made += 1;
        super::new_epoch(self.epoch_seed, self.epochs_made, self.shard)
    }

    fn frame(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> SharedFrame {
        self.buf.clear();
        encode(&mut self.buf);
        SharedFrame::text(std::str::from_utf8(&self.buf).expect("encoders write UTF-8"))
    }

    fn user_entry(&mut self, user: &Key, now: Instant) -> &mut UserEntry {
        if !self.users.contains_key(user) {
            let fresh = Position {
                epoch: self.new_epoch(),
                seq: 0,
            };
            let pos = self.store.start_position(&LogKey::Inbox(user.clone()), fresh);
            self.users.insert(
                user.clone(),
                UserEntry {
                    pos,
                    shards: UserShards::offline_since(now),
                },
            );
        }
        self.users.get_mut(user).expect("inserted above")
    }

    fn room_entry(&mut self, room: &Key, now: Instant) -> &mut RoomEntry {
        if !self.rooms.contains_key(room) {
            let fresh = Position {
                epoch: self.new_epoch(),
                seq: 0,
            };
            let pos = self.store.start_position(&LogKey::Room(room.clone()), fresh);
            self.rooms.insert(
                room.clone(),
                RoomEntry {
                    pos,
                    shards: Vec::new(),
                    users: HashMap::new(),
                    announced: u64::MAX,
                    idle_since: now,
                },
            );
        }
        self.rooms.get_mut(room).expect("inserted above")
    }

    /// Handles a message addressed to this shard's owner side (from shard `from`),
    /// appending answers to `out`. Messages for the local side are not accepted here.
    pub fn handle(
        &mut self,
        from: ShardId,
        msg: MeshMsg,
        now: Instant,
        out: &mut Vec<(ShardId, MeshMsg)>,
        m: &mut MsgMetrics,
    ) {
        match msg {
            MeshMsg::Connect { user, conn } => self.on_connect(from, user, conn, now, out, m),
            MeshMsg::Disconnect { user, conn } => self.on_disconnect(from, &user, conn, now),
            MeshMsg::Resume { user, conn, since, id } => {
                debug_assert_eq!(owner_of(KeyKind::User, &user, self.shards), self.shard);
                let pos = self.user_entry(&user, now).pos;
                let mut frames = Vec::new();
                match self.replay(LogKey::Inbox(user), pos, since, now, &mut frames, m) {
                    Ok(n) => frames.push(self.frame(|o| protocol::encode_resumed(o, id.as_ref(), pos, n))),
                    Err(reason) => frames.push(self.frame(|o| protocol::encode_resync(o, None, pos, reason))),
                }
                out.push((from, MeshMsg::Resumed { conn, frames }));
            }
            MeshMsg::Send {
                to,
                from: sender,
                conn,
                id,
                body,
            } => {
                if let Some(code) = self.refusal(KeyKind::User, &to) {
                    return self.refuse(from, conn, id.as_ref(), code, m);
                }
                let (pos, _) = self.on_send(&to, Some(sender), id.clone(), &body, now, out, m);
                let ack = self.frame(|o| protocol::encode_ack(o, id.as_ref(), AckOf::Inbox { to: &to }, pos));
                out.push((from, MeshMsg::ToConn { conn, frame: ack }));
            }
            MeshMsg::Ack { user, seq, conn, id } => {
                match self.store.ack(&user, seq) {
                    Acked::Unknown => {
                        m.receipts_unknown += 1;
                        m.client_errors += 1;
                        *m.errors_by_code.entry(ErrorCode::UnknownSeq.label()).or_insert(0) += 1;
                        let text = "seq is not in the inbox history";
                        let frame = self.frame(|o| protocol::encode_error(o, ErrorCode::UnknownSeq, text, id.as_ref()));
                        out.push((from, MeshMsg::ToConn { conn, frame }));
                    }
                    // A second ack of the same message (another device) sends nothing.
                    Acked::Again | Acked::First(None) => {}
                    Acked::First(Some(sender)) => {
                        let to = sender.user;
                        let owner = owner_of(KeyKind::User, &to, self.shards);
                        out.push((
                            owner,
                            MeshMsg::Receipt {
                                to,
                                by: user,
                                seq,
                                id: sender.id,
                            },
                        ));
                    }
                }
            }
            MeshMsg::Receipt { to, by, seq, id } => {
                let shards: Vec<ShardId> = self
                    .users
                    .get(&to)
                    .map_or_else(Vec::new, |e| e.shards.shards().collect());
                if shards.is_empty() {
                    // The sender is offline: receipts are not queued (the sender can
                    // ask the backend for message state); counted.
                    m.receipts_undeliverable += 1;
                    return;
                }
                let frame = self.frame(|o| protocol::encode_receipt(o, &by, seq, id.as_ref()));
                m.receipts += 1;
                for shard in shards {
                    out.push((
                        shard,
                        MeshMsg::ToUser {
                            user: to.clone(),
                            frame: frame.clone(),
                        },
                    ));
                }
            }
            MeshMsg::QueryUser { user, conn, id } => {
                let connections = self.user_connections(&user);
                let frame = self.frame(|o| protocol::encode_presence_user(o, id.as_ref(), &user, connections));
                out.push((from, MeshMsg::ToConn { conn, frame }));
            }
            MeshMsg::Join {
                room,
                user,
                conn,
                since,
                presence,
                id,
                ticket,
            } => {
                let request = JoinRequest {
                    room,
                    user,
                    conn,
                    since,
                    presence,
                    id,
                    ticket,
                };
                self.on_join(from, request, now, out, m);
            }
            MeshMsg::Leave { room, user, presence } => self.on_leave(from, room, &user, presence, now, out, m),
            MeshMsg::Publish {
                room,
                from: publisher,
                conn,
                id,
                body,
                exclude_self,
            } => {
                if let Some(code) = self.refusal(KeyKind::Room, &room) {
                    return self.refuse(from, conn, id.as_ref(), code, m);
                }
                let exclude = exclude_self.then_some((from, conn));
                let pos = self.on_publish(&room, Some(&publisher), id.as_ref(), &body, exclude, now, out, m);
                let ack = self.frame(|o| protocol::encode_ack(o, id.as_ref(), AckOf::Room { room: &room }, pos));
                out.push((from, MeshMsg::ToConn { conn, frame: ack }));
            }
            MeshMsg::Api(request) => self.on_api(*request, now, out, m),
            MeshMsg::QueryRoom { room, conn, id } => {
                let max = self.limits.presence_event_max_members;
                let frame = match self.rooms.get(&room) {
                    Some(entry) => {
                        let members = entry.users.len() as u64;
                        let list = (entry.users.len() <= max).then(|| entry.users.keys().map(|k| &**k));
                        self.buf.clear();
                        protocol::encode_presence_room(
                            &mut self.buf,
                            id.as_ref(),
                            &room,
                            members,
                            entry.connections(),
                            list,
                        );
                        SharedFrame::text(std::str::from_utf8(&self.buf).expect("UTF-8"))
                    }
                    None => self.frame(|o| {
                        protocol::encode_presence_room(o, id.as_ref(), &room, 0, 0, Some(std::iter::empty()))
                    }),
                };
                out.push((from, MeshMsg::ToConn { conn, frame }));
            }
            MeshMsg::Welcome { .. }
            | MeshMsg::Resumed { .. }
            | MeshMsg::Joined { .. }
            | MeshMsg::ToConn { .. }
            | MeshMsg::Refused { .. }
            | MeshMsg::UserLimit { .. }
            | MeshMsg::DisconnectUser { .. }
            | MeshMsg::ToUser { .. }
            | MeshMsg::ToRoom { .. }
            | MeshMsg::ApiAnswer(_) => unreachable!("local-side message routed to the owner"),
        }
    }

    fn on_connect(
        &mut self,
        from: ShardId,
        user: Key,
        conn: ConnId,
        now: Instant,
        out: &mut Vec<(ShardId, MeshMsg)>,
        m: &mut MsgMetrics,
    ) {
        debug_assert_eq!(owner_of(KeyKind::User, &user, self.shards), self.shard);
        let limit = self.limits.user_limit();
        let entry = self.user_entry(&user, now);
        let was_offline = entry.connections() == 0;
        let admit = entry.shards.add(from, conn, limit);
        let pos = entry.pos;
        match admit {
            Admit::Admitted => {}
            Admit::Replacing(victim) => {
                let conn = victim.conn;
                self.refusals
                    .push((victim.shard, MeshMsg::UserLimit { conn, replaced: true }));
            }
            Admit::Refused => {
                // No welcome: the connection is closed as soon as its shard hears.
                self.refusals.push((from, MeshMsg::UserLimit { conn, replaced: false }));
                return;
            }
        }
        self.online_users += usize::from(was_offline);
        let limits = self.limits.clone();
        let mut frames = vec![self.frame(|o| protocol::encode_welcome(o, Encoding::Json, &user, pos, &limits))];
        if was_offline {
            // The offline queue goes to the first connection, in order, before anything
            // live (which follows on the same ring).
            self.records.clear();
            m.offline_expired += self.store.offline_take(&user, now, &mut self.records);
            m.offline_delivered += self.records.len() as u64;
            frames.extend(self.records.drain(..).map(|r| r.frame));
        }
        out.push((from, MeshMsg::Welcome { conn, frames }));
    }

    fn on_disconnect(&mut self, from: ShardId, user: &Key, conn: ConnId, now: Instant) {
        let Some(entry) = self.users.get_mut(user) else {
            debug_assert!(false, "disconnect of unknown user {user}");
            return;
        };
        if !entry.shards.remove(from, conn) {
            // A connection the per-user limit refused was never counted.
            return;
        }
        if entry.shards.is_empty() {
            entry.shards = UserShards::offline_since(now);
            self.online_users -= 1;
        }
    }

    /// Replays `log` after `since` into `frames`, or says why it cannot.
    fn replay(
        &mut self,
        log: LogKey,
        pos: Position,
        since: Position,
        now: Instant,
        frames: &mut Vec<SharedFrame>,
        m: &mut MsgMetrics,
    ) -> Result<u64, ResyncReason> {
        let verdict = match since.replay_from(pos) {
            Err(reason) => Err(reason),
            Ok(false) => Ok(0),
            Ok(true) => {
                self.records.clear();
                self.store.read_since(&log, since.seq, now, &mut self.records);
                let complete = self.records.first().is_some_and(|r| r.seq == since.seq + 1)
                    && self.records.last().is_some_and(|r| r.seq == pos.seq);
                if complete {
                    let n = self.records.len() as u64;
                    frames.extend(self.records.drain(..).map(|r| r.frame));
                    Ok(n)
                } else {
                    self.records.clear();
                    Err(ResyncReason::TooOld)
                }
            }
        };
        match verdict {
            Ok(_) => m.replays += 1,
            Err(_) => m.resyncs += 1,
        }
        verdict
    }

    /// Sequences, stores and delivers (or queues) a message for `to`'s inbox from
    /// `sender` (`None`: the backend API). Returns the message's position and whether
    /// `to` was online.
    #[allow(clippy::too_many_arguments)]
    fn on_send(
        &mut self,
        to: &Key,
        sender: Option<Key>,
        id: Option<ClientId>,
        body: &str,
        now: Instant,
        out: &mut Vec<(ShardId, MeshMsg)>,
        m: &mut MsgMetrics,
    ) -> (Position, bool) {
        debug_assert_eq!(owner_of(KeyKind::User, to, self.shards), self.shard);
        let entry = self.user_entry(to, now);
        entry.pos.seq += 1;
        let pos = entry.pos;
        let frame = self.frame(|o| protocol::encode_msg(o, pos.seq, sender.as_deref(), id.as_ref(), body));
        let record = Record {
            seq: pos.seq,
            at: now,
            frame: frame.clone(),
            sender: sender.map(|user| Sender { user, id }),
            acked: false,
        };
        let entry = self.users.get(to).expect("created above");
        let online = !entry.shards.is_empty();
        if !online {
            let pushed = self.store.offline_push(to, record.clone(), now);
            m.offline_queued += 1;
            m.offline_dropped += pushed.dropped;
            m.offline_expired += pushed.expired;
        } else {
            for shard in entry.shards.shards() {
                out.push((
                    shard,
                    MeshMsg::ToUser {
                        user: to.clone(),
                        frame: frame.clone(),
                    },
                ));
            }
        }
        m.history_trimmed += self.store.append(&LogKey::Inbox(to.clone()), record, now);
        m.sends_accepted += 1;
        (pos, online)
    }

    fn on_join(
        &mut self,
        from: ShardId,
        request: JoinRequest,
        now: Instant,
        out: &mut Vec<(ShardId, MeshMsg)>,
        m: &mut MsgMetrics,
    ) {
        let JoinRequest {
            room,
            user,
            conn,
            since,
            presence,
            id,
            ticket,
        } = request;
        debug_assert_eq!(owner_of(KeyKind::Room, &room, self.shards), self.shard);
        let entry = self.room_entry(&room, now);
        let c = count_mut(&mut entry.shards, from);
        c.conns += 1;
        c.watchers += u32::from(presence);
        let count = entry.users.entry(user.clone()).or_insert(0);
        *count += 1;
        let first_of_user = *count == 1;
        let first_member = first_of_user && entry.users.len() == 1;
        let pos = entry.pos;
        self.occupied_rooms += usize::from(first_member);
        let mut frames = Vec::new();
        let mut replayed = 0;
        if let Some(since) = since {
            match self.replay(LogKey::Room(room.clone()), pos, since, now, &mut frames, m) {
                Ok(n) => replayed = n,
                Err(reason) => frames.push(self.frame(|o| protocol::encode_resync(o, Some(&room), pos, reason))),
            }
        }
        frames.push(self.frame(|o| protocol::encode_joined(o, id.as_ref(), &room, pos, replayed)));
        out.push((
            from,
            MeshMsg::Joined {
                conn,
                room: room.clone(),
                ticket,
                frames,
            },
        ));
        if first_of_user {
            self.member_changed(&room, &user, true, out, m);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_leave(
        &mut self,
        from: ShardId,
        room: Key,
        user: &Key,
        presence: bool,
        now: Instant,
        out: &mut Vec<(ShardId, MeshMsg)>,
        m: &mut MsgMetrics,
    ) {
        let Some(entry) = self.rooms.get_mut(&room) else {
            debug_assert!(false, "leave of unknown room {room}");
            return;
        };
        let Some(i) = entry.shards.iter().position(|c| c.shard == from) else {
            debug_assert!(false, "leave from a shard without members");
            return;
        };
        let c = &mut entry.shards[i];
        c.conns -= 1;
        c.watchers -= u32::from(presence);
        if c.conns == 0 {
            debug_assert_eq!(c.watchers, 0);
            entry.shards.swap_remove(i);
        }
        let last_of_user = match entry.users.get_mut(user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                entry.users.remove(user);
                true
            }
            None => {
                debug_assert!(false, "leave of a non-member");
                false
            }
        };
        if entry.shards.is_empty() {
            entry.idle_since = now;
        }
        if last_of_user && entry.users.is_empty() {
            self.occupied_rooms -= 1;
        }
        if last_of_user {
            self.member_changed(&room, user, false, out, m);
        }
    }

    /// A user became or stopped being a member: an event to the watchers of a small
    /// room, or a count at the next tick for a large one.
    fn member_changed(
        &mut self,
        room: &Key,
        user: &Key,
        joined: bool,
        out: &mut Vec<(ShardId, MeshMsg)>,
        m: &mut MsgMetrics,
    ) {
        let entry = self.rooms.get(room).expect("caller holds the room");
        if !entry.has_watchers() {
            return;
        }
        let members = entry.users.len() as u64;
        if entry.users.len() > self.limits.presence_event_max_members {
            if !self.count_dirty.contains(room) {
                self.count_dirty.push(room.clone());
            }
            return;
        }
        let shards: Vec<ShardId> = entry
            .shards
            .iter()
            .filter(|c| c.watchers > 0)
            .map(|c| c.shard)
            .collect();
        let frame = self.frame(|o| protocol::encode_presence_event(o, room, joined, user, members));
        m.presence_events += 1;
        for shard in shards {
            out.push((
                shard,
                MeshMsg::ToRoom {
                    room: room.clone(),
                    frame: frame.clone(),
                    exclude: None,
                    watchers_only: true,
                },
            ));
        }
    }

    /// Sequences, stores and fans out a message to `room` from `publisher` (`None`:
    /// the backend API), skipping the connection `exclude` (its shard and id). Returns
    /// the message's position.
    #[allow(clippy::too_many_arguments)]
    fn on_publish(
        &mut self,
        room: &Key,
        publisher: Option<&str>,
        id: Option<&ClientId>,
        body: &str,
        exclude: Option<(ShardId, ConnId)>,
        now: Instant,
        out: &mut Vec<(ShardId, MeshMsg)>,
        m: &mut MsgMetrics,
    ) -> Position {
        debug_assert_eq!(owner_of(KeyKind::Room, room, self.shards), self.shard);
        let entry = self.room_entry(room, now);
        entry.pos.seq += 1;
        let pos = entry.pos;
        let frame = self.frame(|o| protocol::encode_room_msg(o, room, pos.seq, publisher, id, body));
        let entry = self.rooms.get(room).expect("created above");
        for c in &entry.shards {
            out.push((
                c.shard,
                MeshMsg::ToRoom {
                    room: room.clone(),
                    frame: frame.clone(),
                    exclude: exclude.and_then(|(shard, conn)| (shard == c.shard).then_some(conn)),
                    watchers_only: false,
                },
            ));
        }
        let record = Record {
            seq: pos.seq,
            at: now,
            frame,
            sender: None,
            acked: false,
        };
        m.history_trimmed += self.store.append(&LogKey::Room(room.clone()), record, now);
        m.publishes_accepted += 1;
        pos
    }

    /// Open connections of `user` (0: offline).
    fn user_connections(&self, user: &str) -> u64 {
        self.users.get(user).map_or(0, UserEntry::connections)
    }

    /// A backend request for a user or room of this shard: done, and answered on the
    /// request's channel (see [`super::api`]).
    /// Why a send to user `key` or a publish to room `key` cannot be accepted now: the
    /// store's disk budget is spent (`storage_full`: nothing is accepted that could not
    /// be kept), or the message would create an entry beyond `max_owner_entries`
    /// (`owner_full`: made-up user ids and room names cannot grow the owner's tables
    /// without bound; keys that already have an entry are served as usual).
    fn refusal(&self, kind: KeyKind, key: &Key) -> Option<ErrorCode> {
        if self.store.full() {
            return Some(ErrorCode::StorageFull);
        }
        let known = match kind {
            KeyKind::User => self.users.contains_key(key),
            KeyKind::Room => self.rooms.contains_key(key),
        };
        let entries = self.users.len() + self.rooms.len();
        (!known && entries >= self.limits.max_owner_entries).then_some(ErrorCode::OwnerFull)
    }

    /// Answers a send or publish with `code` (see [`refusal`](Self::refusal)), counted.
    fn refuse(&mut self, from: ShardId, conn: ConnId, id: Option<&ClientId>, code: ErrorCode, m: &mut MsgMetrics) {
        let text = match code {
            ErrorCode::StorageFull => {
                m.storage_full_refusals += 1;
                "the message store is full; retry later"
            }
            _ => {
                m.owner_full_refusals += 1;
                "the gateway tracks too many users and rooms; retry later"
            }
        };
        m.client_errors += 1;
        *m.errors_by_code.entry(code.label()).or_insert(0) += 1;
        let frame = self.frame(|o| protocol::encode_error(o, code, text, id));
        self.refusals.push((from, MeshMsg::ToConn { conn, frame }));
    }

    fn on_api(&mut self, request: ApiRequest, now: Instant, out: &mut Vec<(ShardId, MeshMsg)>, m: &mut MsgMetrics) {
        let refusal = match &request.op {
            ApiOp::Publish { room, .. } => self.refusal(KeyKind::Room, room),
            ApiOp::Send { to, .. } => self.refusal(KeyKind::User, to),
            _ => None,
        };
        let reply = match &request.op {
            _ if refusal == Some(ErrorCode::StorageFull) => {
                m.storage_full_refusals += 1;
                ApiReply::StorageFull
            }
            // Too many entries: the API's answer for "retry later" (503).
            _ if refusal.is_some() => {
                m.owner_full_refusals += 1;
                ApiReply::Overloaded
            }
            ApiOp::Publish { room, body } => {
                let pos = self.on_publish(room, None, None, body, None, now, out, m);
                ApiReply::Published {
                    room: room.clone(),
                    epoch: pos.epoch,
                    seq: pos.seq,
                }
            }
            ApiOp::Send { to, body } => {
                let (pos, online) = self.on_send(to, None, None, body, now, out, m);
                ApiReply::Sent {
                    to: to.clone(),
                    epoch: pos.epoch,
                    seq: pos.seq,
                    online,
                }
            }
            ApiOp::PresenceUser { user } => ApiReply::PresenceUser {
                user: user.clone(),
                connections: self.user_connections(user),
            },
            ApiOp::PresenceRoom { room } => {
                let max = self.limits.presence_event_max_members;
                match self.rooms.get(room) {
                    Some(entry) => ApiReply::PresenceRoom {
                        room: room.clone(),
                        members: entry.users.len() as u64,
                        connections: entry.connections(),
                        users: (entry.users.len() <= max).then(|| {
                            let mut users: Vec<Key> = entry.users.keys().cloned().collect();
                            users.sort_unstable();
                            users
                        }),
                    },
                    None => ApiReply::PresenceRoom {
                        room: room.clone(),
                        members: 0,
                        connections: 0,
                        users: Some(Vec::new()),
                    },
                }
            }
            ApiOp::Disconnect { .. } => unreachable!("disconnects are handled by each shard's local side"),
        };
        let answer = (self.shard, MeshMsg::ApiAnswer(Box::new((request, reply))));
        if refusal.is_some() {
            self.refusals.push(answer);
        } else {
            // Through the owner's output, so it leaves once the change is durable.
            out.push(answer);
        }
    }

    /// The owner's tick: member counts for large rooms that changed, and (every
    /// [`SWEEP_INTERVAL`]) aged history and offline messages dropped and idle entries
    /// forgotten.
    pub fn handle_tick(&mut self, now: Instant, out: &mut Vec<(ShardId, MeshMsg)>, m: &mut MsgMetrics) {
        for room in std::mem::take(&mut self.count_dirty) {
            let Some(entry) = self.rooms.get_mut(&room) else {
                continue;
            };
            let members = entry.users.len() as u64;
            if members == entry.announced {
                continue;
            }
            entry.announced = members;
            let shards: Vec<ShardId> = entry
                .shards
                .iter()
                .filter(|c| c.watchers > 0)
                .map(|c| c.shard)
                .collect();
            let frame = self.frame(|o| protocol::encode_presence_count(o, &room, members));
            m.presence_counts += 1;
            for shard in shards {
                out.push((
                    shard,
                    MeshMsg::ToRoom {
                        room: room.clone(),
                        frame: frame.clone(),
                        exclude: None,
                        watchers_only: true,
                    },
                ));
            }
        }
        if self
            .last_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < SWEEP_INTERVAL)
        {
            return;
        }
        self.last_sweep = Some(now);
        let swept = self.store.sweep(now);
        m.history_trimmed += swept.history_trimmed;
        m.offline_expired += swept.offline_expired;
        // Forget entries nobody needs: no connection or member, nothing stored, idle
        // longer than history lives. Their next message starts a new epoch.
        let max_age = self.limits.history_max_age;
        let store = &mut self.store;
        self.users.retain(|user, e| {
            let log = LogKey::Inbox(user.clone());
            let keep = !e.shards.is_empty()
                || store.first_seq(&log).is_some()
                || store.offline_len(user) > 0
                || e.shards.idle_for(now).is_none_or(|idle| idle <= max_age);
            if !keep {
                store.forget(&log);
            }
            keep
        });
        self.rooms.retain(|room, e| {
            let log = LogKey::Room(room.clone());
            let keep = !e.shards.is_empty()
                || store.first_seq(&log).is_some()
                || now.saturating_duration_since(e.idle_since) <= max_age;
            if !keep {
                store.forget(&log);
            }
            keep
        });
    }

    /// Forgets every entry and stored message, as a restart would (tests of the epoch
    /// change).
    pub fn forget_all(&mut self, store: S) {
        self.users.clear();
        self.rooms.clear();
        self.count_dirty.clear();
        self.online_users = 0;
        self.occupied_rooms = 0;
        self.store = store;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_entry_stays_within_its_budget() {
        // What the owner keeps per user it knows, in its dense table: the key, the inbox
        // position, the directory entry with the idle stamp in it.
        assert_eq!(std::mem::size_of::<Option<(Key, UserEntry)>>(), 48);
    }

    const fn limit(max: u32, policy: UserLimitPolicy) -> UserLimit {
        UserLimit { max, policy }
    }

    const NO_CAP: UserLimit = limit(0, UserLimitPolicy::Newest);

    fn c(n: u32) -> ConnId {
        ConnId::new(n, 1)
    }

    #[test]
    fn user_shards_name_each_connection_and_fold_back_inline() {
        assert_eq!(std::mem::size_of::<UserShards>(), 16);
        assert_eq!(std::mem::size_of::<UserConn>(), 12);
        let mut s = UserShards::default();
        assert!(!s.remove(0, c(1)));
        assert_eq!(s.add(3, c(1), NO_CAP), Admit::Admitted);
        assert!(matches!(s, UserShards::One(3, k) if k == c(1)));
        s.add(3, c(2), NO_CAP);
        s.add(1, c(1), NO_CAP);
        // One entry per connection, each shard named once.
        assert_eq!((s.connections(), s.shards().collect::<Vec<_>>()), (3, vec![3, 1]));
        assert!(!s.remove(7, c(1)) && !s.remove(3, c(9)), "only the exact connection");
        assert!(s.remove(3, c(1)) && s.remove(3, c(2)));
        assert!(!s.remove(3, c(2)), "not twice");
        assert!(matches!(s, UserShards::One(1, k) if k == c(1)), "{s:?}");
        assert!(s.remove(1, c(1)));
        assert!(s.is_empty() && s.connections() == 0 && s.shards().next().is_none());
        // Thousands of connections on a few shards, some past the bitmap's 256.
        for n in 0..3000 {
            s.add([2, 300, 2, 7, 300][n as usize % 5], c(n), NO_CAP);
        }
        assert_eq!(s.shards().collect::<Vec<_>>(), vec![2, 300, 7]);
        assert_eq!(s.connections(), 3000);
    }

    #[test]
    fn the_per_user_limit_replaces_the_oldest_once_or_refuses_the_newest() {
        let newest = limit(2, UserLimitPolicy::Newest);
        let mut s = UserShards::default();
        assert_eq!(s.add(0, c(1), newest), Admit::Admitted);
        assert_eq!(s.add(1, c(2), newest), Admit::Admitted);
        let victim = |shard, n| {
            Admit::Replacing(UserConn {
                shard,
                replaced: true,
                conn: c(n),
            })
        };
        assert_eq!(s.add(0, c(3), newest), victim(0, 1));
        // Before the replaced one's disconnect arrives, the next oldest goes, not it again.
        assert_eq!(s.add(1, c(4), newest), victim(1, 2));
        assert_eq!(s.connections(), 4, "the replaced stay listed until they close");
        assert!(s.remove(0, c(1)) && s.remove(1, c(2)));
        assert_eq!(s.connections(), 2);
        assert_eq!(s.add(1, c(5), newest), victim(0, 3));
        // The newer ones close first: the one left was replaced, so it stays a list and
        // the user is not counted against the limit by it.
        assert!(s.remove(1, c(4)) && s.remove(1, c(5)));
        assert_eq!((s.connections(), s.live()), (1, 0));
        assert_eq!(s.add(0, c(6), newest), Admit::Admitted);
        assert!(s.remove(0, c(3)));
        assert!(matches!(s, UserShards::One(0, k) if k == c(6)), "{s:?}");

        let oldest = limit(1, UserLimitPolicy::Oldest);
        let mut s = UserShards::default();
        assert_eq!(s.add(0, c(1), oldest), Admit::Admitted);
        assert_eq!(s.add(1, c(2), oldest), Admit::Refused);
        assert!(!s.remove(1, c(2)), "a refused connection was never counted");
        assert!(s.remove(0, c(1)));
        assert_eq!(s.add(1, c(2), oldest), Admit::Admitted);
    }

    #[test]
    fn user_shards_tell_how_long_a_user_has_been_offline() {
        let t0 = Instant::now();
        let mut s = UserShards::offline_since(t0);
        assert_eq!(s.idle_for(t0 + Duration::from_secs(5)), Some(Duration::from_secs(5)));
        s.add(0, c(1), NO_CAP);
        assert_eq!(s.idle_for(t0 + Duration::from_secs(6)), None, "online");
        assert!(s.remove(0, c(1)));
        assert!(
            s.idle_for(t0).is_some_and(|d| d > Duration::from_secs(86_400)),
            "offline since long ago until told"
        );
    }
    use crate::msg::store::MemStore;
    use serde_json::Value;

    fn json(frame: &SharedFrame) -> Value {
        // Server frames are unmasked single frames: skip the 2- or 4-byte header.
        let bytes = frame.as_bytes();
        let start = if bytes[1] & 0x7f == 126 { 4 } else { 2 };
        serde_json::from_slice(&bytes[start..]).unwrap()
    }

    fn owner() -> Owner<MemStore> {
        let limits = MsgLimits::default();
        Owner::new(0, 1, &limits, MemStore::new(&limits), 42)
    }

    #[test]
    fn send_to_offline_user_queues_then_welcome_delivers() {
        let mut o = owner();
        let mut out = Vec::new();
        let mut m = MsgMetrics::default();
        let now = Instant::now();
        o.handle(
            0,
            MeshMsg::Send {
                to: "bob".into(),
                from: "alice".into(),
                conn: ConnId::new(1, 0),
                id: Some(ClientId::from_json_text("\"a\"")),
                body: "1".into(),
            },
            now,
            &mut out,
            &mut m,
        );
        assert_eq!(out.len(), 1, "only the ack: bob is offline");
        assert_eq!(m.offline_queued, 1);
        let MeshMsg::ToConn { frame, .. } = &out[0].1 else {
            panic!()
        };
        let ack = json(frame);
        assert_eq!(ack["seq"], 1);
        assert_eq!(ack["id"], "a");
        out.clear();
        o.handle(
            0,
            MeshMsg::Connect {
                user: "bob".into(),
                conn: ConnId::new(2, 0),
            },
            now,
            &mut out,
            &mut m,
        );
        let MeshMsg::Welcome { frames, conn } = &out[0].1 else {
            panic!()
        };
        assert_eq!(*conn, ConnId::new(2, 0));
        assert_eq!(json(&frames[0])["type"], "welcome");
        assert_eq!(json(&frames[0])["inbox"]["seq"], 1);
        assert_eq!(json(&frames[1])["type"], "msg");
        assert_eq!(m.offline_delivered, 1);
        // The epoch is below 2^53 and not 0.
        let epoch = json(&frames[0])["inbox"]["epoch"].as_u64().unwrap();
        assert!(epoch > 0 && epoch < (1 << 53));
    }

    #[test]
    fn idle_entries_are_forgotten_and_come_back_with_a_new_epoch() {
        let mut o = owner();
        let mut out = Vec::new();
        let mut m = MsgMetrics::default();
        let t0 = Instant::now();
        o.handle(
            0,
            MeshMsg::Connect {
                user: "bob".into(),
                conn: ConnId::new(2, 0),
            },
            t0,
            &mut out,
            &mut m,
        );
        let MeshMsg::Welcome { frames, .. } = &out[0].1 else {
            panic!()
        };
        let e1 = json(&frames[0])["inbox"]["epoch"].as_u64().unwrap();
        o.handle(
            0,
            MeshMsg::Disconnect {
                user: "bob".into(),
                conn: ConnId::new(2, 0),
            },
            t0,
            &mut out,
            &mut m,
        );
        o.handle_tick(t0, &mut out, &mut m);
        assert_eq!(o.users(), 1, "idle, but not for long");
        let later = t0 + MsgLimits::default().history_max_age + Duration::from_secs(2);
        o.handle_tick(later, &mut out, &mut m);
        assert_eq!(o.users(), 0);
        out.clear();
        o.handle(
            0,
            MeshMsg::Connect {
                user: "bob".into(),
                conn: ConnId::new(3, 0),
            },
            later,
            &mut out,
            &mut m,
        );
        let MeshMsg::Welcome { frames, .. } = &out[0].1 else {
            panic!()
        };
        assert_ne!(json(&frames[0])["inbox"]["epoch"].as_u64().unwrap(), e1);
    }
}
