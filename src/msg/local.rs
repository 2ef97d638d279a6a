//! The local side of one shard: which of its connections belong to which user and are
//! members of which room, so a delivery from an owner ([`super::mesh::MeshMsg::ToUser`],
//! `ToRoom`) becomes a list of local [`ConnId`]s.
//!
//! It also holds what a connection is waiting for, which keeps delivery exactly-once
//! and in order without any buffering:
//!
//! - **Welcome pending**: from connect until the owner's welcome arrives, inbox
//!   deliveries skip the connection. The welcome carries the inbox position; every
//!   message the connection skipped has a sequence number at or below it (the owner sent
//!   it before the welcome, on the same FIFO path), so nothing after the welcome is lost.
//! - **Replay pending** (after `resume`): inbox deliveries skip the connection until the
//!   replay arrives; the replay runs up to the owner's position when it handled the
//!   resume, which covers every skipped message, and later ones follow it.
//! - **Joining**: a connection becomes a room member only when the owner's `joined`
//!   arrives (after any replay), so a message in flight before the join is neither lost
//!   (the replay has it) nor delivered twice.
#![forbid(unsafe_code)]

//!
//! **Memory.** This is what every idle connection of the messaging mode costs, so it is
//! laid out for it: a connection's record (32 bytes, asserted) lives in a vector indexed
//! by its slot number, like the shard's own slots; the user table is a hash table of
//! 4-byte indexes (the user's oldest local connection), whose records chain the user's
//! other connections; rooms and token claims, which most connections never have, live
//! in a side table. Before, four maps held about 220 bytes per connection.

use std::hash::BuildHasher as _;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use super::chunked::Chunked;
use super::protocol::{Encoding, ErrorCode};
use super::{ConnId, Key};
use crate::auth::Identity;

/// No connection (the end of a user's chain).
const NONE: u32 = u32::MAX;

/// A connection's membership in one room.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RoomSlot {
    room: Key,
    /// `true` once the owner's `joined` arrived.
    joined: bool,
    /// This join's number: only the `joined` answering it counts.
    ticket: u32,
    /// Asked for presence events.
    watch: bool,
}

/// What the hub knows about one local connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// The authenticated user (the one copy of the id this shard holds, shared).
    pub user: Key,
    /// The connection's generation: a stale [`ConnId`] of the same slot does not match.
    generation: u32,
    /// The slot of the user's next local connection (oldest first), or `NONE`.
    next: u32,
    /// The ticket of the next join.
    next_ticket: u32,
    replays_pending: u16,
    /// The negotiated encoding.
    pub encoding: Encoding,
    welcome_pending: bool,
}

impl ConnInfo {
    /// Whether inbox deliveries reach this connection now.
    fn takes_inbox(&self) -> bool {
        !self.welcome_pending && self.replays_pending == 0
    }
}

/// What few connections have: rooms, and a token that restricts joins or publishes.
#[derive(Debug, Default)]
struct Extra {
    /// The token's join/publish claims, when it restricts them (`None`: no
    /// restriction).
    claims: Option<Arc<Identity>>,
    rooms: Vec<RoomSlot>,
}

impl Extra {
    fn may_join(&self, room: &str) -> bool {
        self.claims.as_ref().is_none_or(|i| i.may_join(room))
    }

    fn may_publish(&self, room: &str) -> bool {
        self.claims.as_ref().is_none_or(|i| i.may_publish(room))
    }
}

/// What a closed connection leaves behind, for the owners to hear about.
#[derive(Debug)]
pub struct Removed {
    /// Its user.
    pub user: Key,
    /// Its rooms (joined or joining) and whether it watched presence in each.
    pub rooms: Vec<(Key, bool)>,
}

/// The local side of a shard. See the module docs.
#[derive(Debug, Default)]
pub struct LocalHub {
    /// By slot number ([`ConnId::index`]), in chunks that never move (slots are handed
    /// out from 0 up, so the records fill them in order).
    conns: Chunked<Option<ConnInfo>>,
    /// Connections known.
    live: usize,
    /// Each user with a local connection: the slot of the oldest one.
    users: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Connections with rooms or restricting claims.
    extras: HashMap<ConnId, Extra>,
    /// Local member connections of each room (joined, not joining) → watches presence.
    rooms: HashMap<Key, HashMap<ConnId, bool>>,
}

/// The record of slot `i` (which is known to hold one).
fn at(conns: &Chunked<Option<ConnInfo>>, i: u32) -> &ConnInfo {
    conns[i as usize]
        .as_ref()
        .expect("a user's chain holds live connections")
}

impl LocalHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections known (gauge).
    pub fn connections(&self) -> usize {
        self.live
    }

    /// Users with a local connection (gauge).
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Rooms with local members (gauge).
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// The connection's state, if it is known.
    pub fn conn(&self, conn: ConnId) -> Option<&ConnInfo> {
        self.conns
            .get(conn.index() as usize)?
            .as_ref()
            .filter(|c| c.generation == conn.generation())
    }

    fn conn_mut(&mut self, conn: ConnId) -> Option<&mut ConnInfo> {
        self.conns
            .get_mut(conn.index() as usize)?
            .as_mut()
            .filter(|c| c.generation == conn.generation())
    }

    /// The slot of `user`'s oldest local connection.
    fn head(&self, user: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(user);
        self.users.find(hash, |&i| *at(&self.conns, i).user == *user).copied()
    }

    /// Registers a new connection of `identity`'s user, waiting for its welcome.
    /// Returns the user key (shared with the hub's maps).
    pub fn add(&mut self, conn: ConnId, identity: &Identity, encoding: Encoding) -> Key {
        assert!(self.conn(conn).is_none(), "connection {conn:?} added twice");
        let index = conn.index();
        if let Some(stale) = self.conns.get(index as usize).and_then(Option::as_ref) {
            // The slot's previous connection was never removed (a bug upstream): forget
            // it properly rather than break its user's chain by overwriting it.
            debug_assert!(false, "slot {index} reused before its connection was removed");
            self.remove(ConnId::new(index, stale.generation));
        }
        let head = self.head(&identity.user_id);
        let user: Key = match head {
            Some(h) => at(&self.conns, h).user.clone(),
            None => identity.user_id.as_str().into(),
        };
        while self.conns.len() <= index as usize {
            self.conns.push(None);
        }
        self.conns[index as usize] = Some(ConnInfo {
            user: user.clone(),
            generation: conn.generation(),
            next: NONE,
            next_ticket: 0,
            replays_pending: 0,
            encoding,
            welcome_pending: true,
        });
        self.live += 1;
        match head {
            Some(mut i) => {
                // Appended: the chain stays oldest first. The walk is as long as the
                // user's local connections (`--max-connections-per-user`, 16 by
                // default); `remove` walks the same chain, as the `Vec` before did.
                loop {
                    let next = at(&self.conns, i).next;
                    if next == NONE {
                        break;
                    }
                    i = next;
                }
                self.conns[i as usize].as_mut().expect("in the chain").next = index;
            }
            None => {
                let (conns, hasher) = (&self.conns, &self.hasher);
                let hash = hasher.hash_one(&*user);
                self.users
                    .insert_unique(hash, index, |&i| hasher.hash_one(&*at(conns, i).user));
            }
        }
        if identity.can_join.is_some() || identity.can_publish.is_some() {
            self.extras.entry(conn).or_default().claims = Some(Arc::new(identity.clone()));
        }
        user
    }

    /// Forgets a connection: returns its user and rooms, or `None` if unknown.
    pub fn remove(&mut self, conn: ConnId) -> Option<Removed> {
        self.conn(conn)?;
        let index = conn.index();
        let info = self.conns[index as usize].take().expect("checked above");
        self.live -= 1;
        let hash = self.hasher.hash_one(&*info.user);
        let conns = &mut self.conns;
        let head = self.users.find_entry(hash, |&i| {
            i == index || conns[i as usize].as_ref().is_some_and(|c| c.user == info.user)
        });
        match head {
            Ok(mut entry) if *entry.get() == index => {
                if info.next == NONE {
                    entry.remove();
                } else {
                    *entry.get_mut() = info.next;
                }
            }
            Ok(entry) => {
                let mut i = *entry.get();
                loop {
                    let c = conns[i as usize].as_mut().expect("in the chain");
                    if c.next == index {
                        c.next = info.next;
                        break;
                    }
                    debug_assert_ne!(c.next, NONE, "{conn:?} is not in its user's chain");
                    if c.next == NONE {
                        break;
                    }
                    i = c.next;
                }
            }
            Err(_) => debug_assert!(false, "{conn:?}'s user has no entry"),
        }
        let extra = self.extras.remove(&conn).unwrap_or_default();
        let mut rooms = Vec::with_capacity(extra.rooms.len());
        for slot in extra.rooms {
            if slot.joined {
                self.remove_member(&slot.room, conn);
            }
            rooms.push((slot.room, slot.watch));
        }
        Some(Removed { user: info.user, rooms })
    }

    fn remove_member(&mut self, room: &Key, conn: ConnId) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(&conn);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Whether `conn`'s token allows publishing to `room` (`false` for an unknown
    /// connection).
    pub fn may_publish(&self, conn: ConnId, room: &str) -> bool {
        self.conn(conn).is_some() && self.extras.get(&conn).is_none_or(|e| e.may_publish(room))
    }

    /// The welcome arrived: inbox deliveries start (unless a replay is pending).
    pub fn welcomed(&mut self, conn: ConnId) -> bool {
        self.conn_mut(conn).map(|c| c.welcome_pending = false).is_some()
    }

    /// A `resume` went to the owner: inbox deliveries pause until its answer.
    pub fn begin_resume(&mut self, conn: ConnId) {
        if let Some(c) = self.conn_mut(conn) {
            c.replays_pending = c.replays_pending.saturating_add(1);
        }
    }

    /// The answer to a resume arrived. `false` if the connection is gone.
    pub fn resumed(&mut self, conn: ConnId) -> bool {
        match self.conn_mut(conn) {
            Some(c) => {
                debug_assert!(c.replays_pending > 0);
                c.replays_pending = c.replays_pending.saturating_sub(1);
                true
            }
            None => false,
        }
    }

    /// A `join` is about to go to the owner: checks and records it as joining; returns
    /// the ticket the owner's `joined` must carry.
    pub fn begin_join(&mut self, conn: ConnId, room: &Key, watch: bool, max_rooms: usize) -> Result<u32, ErrorCode> {
        let info = self.conn_mut(conn).ok_or(ErrorCode::BadRequest)?;
        let ticket = info.next_ticket;
        let extra = self.extras.get(&conn);
        if let Some(extra) = extra {
            if extra.rooms.iter().any(|s| s.room == *room) {
                return Err(ErrorCode::AlreadyJoined);
            }
            if extra.rooms.len() >= max_rooms {
                return Err(ErrorCode::TooManyRooms);
            }
            if !extra.may_join(room) {
                return Err(ErrorCode::Forbidden);
            }
        } else if max_rooms == 0 {
            return Err(ErrorCode::TooManyRooms);
        }
        let info = self.conn_mut(conn).expect("checked above");
        info.next_ticket = info.next_ticket.wrapping_add(1);
        self.extras.entry(conn).or_default().rooms.push(RoomSlot {
            room: room.clone(),
            joined: false,
            ticket,
            watch,
        });
        Ok(ticket)
    }

    /// The owner's `joined` for the join with `ticket` arrived: the connection is a
    /// member from now on. `false` if it is gone or left meanwhile (also when it joined
    /// again since: that join has its own ticket), and then its frames must not be sent.
    pub fn joined(&mut self, conn: ConnId, room: &Key, ticket: u32) -> bool {
        if self.conn(conn).is_none() {
            return false;
        }
        let Some(slot) = self.extras.get_mut(&conn).and_then(|e| {
            e.rooms
                .iter_mut()
                .find(|s| s.room == *room && !s.joined && s.ticket == ticket)
        }) else {
            return false;
        };
        slot.joined = true;
        let watch = slot.watch;
        self.rooms.entry(room.clone()).or_default().insert(conn, watch);
        true
    }

    /// Leaves a room (joined or joining): returns whether the connection watched
    /// presence there.
    pub fn leave(&mut self, conn: ConnId, room: &str) -> Result<bool, ErrorCode> {
        self.conn(conn).ok_or(ErrorCode::BadRequest)?;
        let extra = self.extras.get_mut(&conn).ok_or(ErrorCode::NotJoined)?;
        let i = extra
            .rooms
            .iter()
            .position(|s| &*s.room == room)
            .ok_or(ErrorCode::NotJoined)?;
        let slot = extra.rooms.swap_remove(i);
        if extra.rooms.is_empty() && extra.claims.is_none() {
            self.extras.remove(&conn);
        }
        if slot.joined {
            self.remove_member(&slot.room, conn);
        }
        Ok(slot.watch)
    }

    /// `user`'s local connections, oldest first.
    fn chain(&self, user: &str) -> impl Iterator<Item = (ConnId, &ConnInfo)> {
        let mut i = self.head(user).unwrap_or(NONE);
        std::iter::from_fn(move || {
            if i == NONE {
                return None;
            }
            let c = at(&self.conns, i);
            let id = ConnId::new(i, c.generation);
            i = c.next;
            Some((id, c))
        })
    }

    /// Calls `f` with every local connection of `user` that takes inbox deliveries now;
    /// returns how many were skipped because they wait for a welcome or a replay.
    pub fn for_user(&self, user: &str, mut f: impl FnMut(ConnId)) -> u64 {
        let mut skipped = 0;
        for (conn, info) in self.chain(user) {
            if info.takes_inbox() {
                f(conn);
            } else {
                skipped += 1;
            }
        }
        skipped
    }

    /// Calls `f` with every local connection of `user`, whatever it waits for.
    pub fn for_each_conn_of(&self, user: &str, mut f: impl FnMut(ConnId)) {
        for (conn, _) in self.chain(user) {
            f(conn);
        }
    }

    /// Calls `f` with every local member of `room` (only those watching presence when
    /// `watchers_only`), except `exclude`.
    pub fn for_room(&self, room: &str, exclude: Option<ConnId>, watchers_only: bool, mut f: impl FnMut(ConnId)) {
        for (&conn, &watch) in self.rooms.get(room).into_iter().flatten() {
            if Some(conn) != exclude && (watch || !watchers_only) {
                f(conn);
            }
        }
    }

    /// Local members of `room` (tests, gauges).
    pub fn members(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Carrier;

    pub(crate) fn identity(user: &str, join: Option<&[&str]>) -> Identity {
        Identity {
            user_id: user.to_owned(),
            can_join: join.map(|j| j.iter().map(|s| (*s).to_owned()).collect()),
            can_publish: None,
            expires_at: None,
            carrier: Carrier::Anonymous,
            generated: false,
        }
    }

    #[test]
    fn membership_starts_at_joined_and_ends_at_leave() {
        let mut hub = LocalHub::new();
        let room: Key = "r".into();
        hub.add(ConnId::new(1, 0), &identity("a", None), Encoding::Json);
        hub.add(ConnId::new(2, 0), &identity("a", Some(&["x*"])), Encoding::Json);
        assert_eq!(
            hub.begin_join(ConnId::new(2, 0), &room, false, 8),
            Err(ErrorCode::Forbidden)
        );
        let ticket = hub.begin_join(ConnId::new(1, 0), &room, true, 8).unwrap();
        assert_eq!(
            hub.begin_join(ConnId::new(1, 0), &room, true, 8),
            Err(ErrorCode::AlreadyJoined)
        );
        let mut got = Vec::new();
        hub.for_room("r", None, false, |c| got.push(c));
        assert!(got.is_empty(), "joining is not a member yet");
        assert!(
            !hub.joined(ConnId::new(1, 0), &room, ticket + 1),
            "not this join's answer"
        );
        assert!(hub.joined(ConnId::new(1, 0), &room, ticket));
        hub.for_room("r", None, true, |c| got.push(c));
        assert_eq!(got, [ConnId::new(1, 0)]);
        got.clear();
        hub.for_room("r", Some(ConnId::new(1, 0)), false, |c| got.push(c));
        assert!(got.is_empty());
        assert_eq!(hub.leave(ConnId::new(1, 0), "r"), Ok(true));
        assert_eq!(hub.leave(ConnId::new(1, 0), "r"), Err(ErrorCode::NotJoined));
        assert_eq!(hub.members("r"), 0);
        assert_eq!(hub.rooms(), 0);
        // Room cap counts joining rooms too.
        for i in 0..2 {
            hub.begin_join(ConnId::new(1, 0), &format!("r{i}").into(), false, 2)
                .unwrap();
        }
        assert_eq!(
            hub.begin_join(ConnId::new(1, 0), &"r9".into(), false, 2),
            Err(ErrorCode::TooManyRooms)
        );
        let removed = hub.remove(ConnId::new(1, 0)).unwrap();
        assert_eq!(removed.rooms.len(), 2);
        assert_eq!(hub.connections(), 1);
    }

    #[test]
    fn inbox_waits_for_welcome_and_replays() {
        let mut hub = LocalHub::new();
        hub.add(ConnId::new(1, 0), &identity("a", None), Encoding::Json);
        hub.add(ConnId::new(2, 0), &identity("a", None), Encoding::Json);
        let mut got = Vec::new();
        assert_eq!(hub.for_user("a", |c| got.push(c)), 2);
        hub.welcomed(ConnId::new(1, 0));
        hub.welcomed(ConnId::new(2, 0));
        hub.begin_resume(ConnId::new(2, 0));
        assert_eq!(hub.for_user("a", |c| got.push(c)), 1);
        assert_eq!(got, [ConnId::new(1, 0)]);
        hub.resumed(ConnId::new(2, 0));
        got.clear();
        hub.for_user("a", |c| got.push(c));
        got.sort();
        assert_eq!(got, [ConnId::new(1, 0), ConnId::new(2, 0)]);
        hub.remove(ConnId::new(1, 0));
        hub.remove(ConnId::new(2, 0));
        assert_eq!(hub.for_user("a", |_| panic!()), 0);
        assert_eq!((hub.connections(), hub.users()), (0, 0));
    }

    #[test]
    fn a_connection_record_is_32_bytes() {
        // What every idle messaging connection costs here (with its share of the user
        // table, 4 bytes per bucket); the README's density table counts on it.
        assert_eq!(std::mem::size_of::<Option<ConnInfo>>(), 32);
    }

    #[test]
    fn stale_ids_and_chains_in_any_removal_order() {
        let mut hub = LocalHub::new();
        let ids: Vec<ConnId> = (0..4).map(|i| ConnId::new(i, 7)).collect();
        for &c in &ids {
            hub.add(c, &identity("u", None), Encoding::Json);
            hub.welcomed(c);
        }
        hub.add(ConnId::new(9, 1), &identity("v", None), Encoding::Json);
        assert_eq!(hub.users(), 2);
        assert!(hub.conn(ConnId::new(1, 8)).is_none(), "another generation of slot 1");
        assert!(hub.remove(ConnId::new(1, 8)).is_none());
        let order = |hub: &LocalHub| {
            let mut got = Vec::new();
            hub.for_each_conn_of("u", |c| got.push(c));
            got
        };
        assert_eq!(order(&hub), ids, "oldest first");
        // Middle, head, tail.
        for (gone, left) in [(2usize, vec![0usize, 1, 3]), (0, vec![1, 3]), (3, vec![1])] {
            assert_eq!(&*hub.remove(ids[gone]).unwrap().user, "u");
            assert_eq!(order(&hub), left.iter().map(|&i| ids[i]).collect::<Vec<_>>());
        }
        hub.remove(ids[1]);
        assert_eq!(order(&hub), []);
        assert_eq!((hub.users(), hub.connections()), (1, 1));
        // The slot reused by a new connection of another user.
        hub.add(ConnId::new(1, 9), &identity("w", None), Encoding::Json);
        assert_eq!(&*hub.conn(ConnId::new(1, 9)).unwrap().user, "w");
    }

    #[test]
    fn matches_a_model_under_random_churn() {
        use std::collections::BTreeMap;
        let mut hub = LocalHub::new();
        let mut model: BTreeMap<u32, (u32, String)> = BTreeMap::new();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut generation = 0;
        for _ in 0..20_000 {
            let slot = (next() % 64) as u32;
            match model.remove(&slot) {
                Some((g, user)) => assert_eq!(*hub.remove(ConnId::new(slot, g)).unwrap().user, *user),
                None => {
                    generation += 1;
                    let user = format!("user{}", next() % 12);
                    hub.add(ConnId::new(slot, generation), &identity(&user, None), Encoding::Json);
                    model.insert(slot, (generation, user));
                }
            }
            if next() % 64 == 0 {
                for u in 0..12 {
                    let user = format!("user{u}");
                    let mut got = Vec::new();
                    hub.for_each_conn_of(&user, |c| got.push(c.index()));
                    got.sort_unstable();
                    let want: Vec<u32> = model.iter().filter(|(_, (_, m))| *m == user).map(|(s, _)| *s).collect();
                    assert_eq!(got, want, "{user}");
                }
                assert_eq!(hub.connections(), model.len());
            }
        }
    }
}
