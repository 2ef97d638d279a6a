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

use std::sync::Arc;

use hashbrown::HashMap;

use super::protocol::{Encoding, ErrorCode};
use super::{ConnId, Key};
use crate::auth::Identity;

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
    /// The authenticated user.
    pub user: Key,
    /// The negotiated encoding.
    pub encoding: Encoding,
    /// The token's join/publish claims, when it restricts them (`None`: no
    /// restriction).
    claims: Option<Arc<Identity>>,
    welcome_pending: bool,
    replays_pending: u32,
    rooms: Vec<RoomSlot>,
    /// The ticket of the next join.
    next_ticket: u32,
}

impl ConnInfo {
    /// Whether the token allows joining `room`.
    pub fn may_join(&self, room: &str) -> bool {
        self.claims.as_ref().is_none_or(|i| i.may_join(room))
    }

    /// Whether the token allows publishing to `room`.
    pub fn may_publish(&self, room: &str) -> bool {
        self.claims.as_ref().is_none_or(|i| i.may_publish(room))
    }

    /// Whether inbox deliveries reach this connection now.
    fn takes_inbox(&self) -> bool {
        !self.welcome_pending && self.replays_pending == 0
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
    conns: HashMap<ConnId, ConnInfo>,
    /// Local connections of each user.
    users: HashMap<Key, Vec<ConnId>>,
    /// Local member connections of each room (joined, not joining) → watches presence.
    rooms: HashMap<Key, HashMap<ConnId, bool>>,
}

impl LocalHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections known (gauge).
    pub fn connections(&self) -> usize {
        self.conns.len()
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
        self.conns.get(&conn)
    }

    /// Registers a new connection of `identity`'s user, waiting for its welcome.
    /// Returns the user key (shared with the hub's maps).
    pub fn add(&mut self, conn: ConnId, identity: &Identity, encoding: Encoding) -> Key {
        let user: Key = match self.users.get_key_value(identity.user_id.as_str()) {
            Some((key, _)) => key.clone(),
            None => identity.user_id.as_str().into(),
        };
        let restricted = identity.can_join.is_some() || identity.can_publish.is_some();
        let info = ConnInfo {
            user: user.clone(),
            encoding,
            claims: restricted.then(|| Arc::new(identity.clone())),
            welcome_pending: true,
            replays_pending: 0,
            rooms: Vec::new(),
            next_ticket: 0,
        };
        let previous = self.conns.insert(conn, info);
        assert!(previous.is_none(), "connection {conn:?} added twice");
        self.users.entry(user.clone()).or_default().push(conn);
        user
    }

    /// Forgets a connection: returns its user and rooms, or `None` if unknown.
    pub fn remove(&mut self, conn: ConnId) -> Option<Removed> {
        let info = self.conns.remove(&conn)?;
        if let Some(list) = self.users.get_mut(&info.user) {
            list.retain(|c| *c != conn);
            if list.is_empty() {
                self.users.remove(&info.user);
            }
        }
        let mut rooms = Vec::with_capacity(info.rooms.len());
        for slot in info.rooms {
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

    /// The welcome arrived: inbox deliveries start (unless a replay is pending).
    pub fn welcomed(&mut self, conn: ConnId) -> bool {
        self.conns.get_mut(&conn).map(|c| c.welcome_pending = false).is_some()
    }

    /// A `resume` went to the owner: inbox deliveries pause until its answer.
    pub fn begin_resume(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.replays_pending += 1;
        }
    }

    /// The answer to a resume arrived. `false` if the connection is gone.
    pub fn resumed(&mut self, conn: ConnId) -> bool {
        match self.conns.get_mut(&conn) {
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
        let info = self.conns.get_mut(&conn).ok_or(ErrorCode::BadRequest)?;
        if info.rooms.iter().any(|s| s.room == *room) {
            return Err(ErrorCode::AlreadyJoined);
        }
        if info.rooms.len() >= max_rooms {
            return Err(ErrorCode::TooManyRooms);
        }
        if !info.may_join(room) {
            return Err(ErrorCode::Forbidden);
        }
        let ticket = info.next_ticket;
        info.next_ticket = info.next_ticket.wrapping_add(1);
        info.rooms.push(RoomSlot {
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
        let Some(info) = self.conns.get_mut(&conn) else {
            return false;
        };
        let Some(slot) = info
            .rooms
            .iter_mut()
            .find(|s| s.room == *room && !s.joined && s.ticket == ticket)
        else {
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
        let info = self.conns.get_mut(&conn).ok_or(ErrorCode::BadRequest)?;
        let i = info
            .rooms
            .iter()
            .position(|s| &*s.room == room)
            .ok_or(ErrorCode::NotJoined)?;
        let slot = info.rooms.swap_remove(i);
        if slot.joined {
            self.remove_member(&slot.room, conn);
        }
        Ok(slot.watch)
    }

    /// Calls `f` with every local connection of `user` that takes inbox deliveries now;
    /// returns how many were skipped because they wait for a welcome or a replay.
    pub fn for_user(&self, user: &str, mut f: impl FnMut(ConnId)) -> u64 {
        let mut skipped = 0;
        for &conn in self.users.get(user).into_iter().flatten() {
            if self.conns[&conn].takes_inbox() {
                f(conn);
            } else {
                skipped += 1;
            }
        }
        skipped
    }

    /// Calls `f` with every local connection of `user`, whatever it waits for.
    pub fn for_each_conn_of(&self, user: &str, f: impl FnMut(ConnId)) {
        self.users.get(user).into_iter().flatten().copied().for_each(f);
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
    }
}
