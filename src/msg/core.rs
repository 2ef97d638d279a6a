//! [`MsgShard`]: one shard's messaging, the owner side and the local side behind one
//! sans-IO API, which is what `server::shard` drives.
//!
//! # Driving it
//!
//! Inputs (`handle_*`), each with `now`:
//!
//! | when | call |
//! |---|---|
//! | a connection finished its upgrade | [`handle_connect`](MsgShard::handle_connect) with its [`ConnId`], [`Identity`] and [`Encoding`] |
//! | a text or binary message arrived on it | [`handle_client_frame`](MsgShard::handle_client_frame) |
//! | it is gone (any reason, also after an [`Output::Close`]) | [`handle_disconnect`](MsgShard::handle_disconnect) |
//! | a message came off a mesh ring | [`handle_mesh`](MsgShard::handle_mesh) with the source shard |
//! | the mesh shed a message this shard sent | [`handle_shed`](MsgShard::handle_shed) |
//! | the timer tick | [`handle_tick`](MsgShard::handle_tick) |
//! | a backend API request arrived in the shard's inbox (`Command::Api`) | [`handle_api`](MsgShard::handle_api) |
//!
//! Outputs (`poll_*`), drained after every input or batch of inputs:
//!
//! - [`poll_output`](MsgShard::poll_output): [`Output::Send`] a frame (shared: queue
//!   the same `SharedFrame` on each connection) or [`Output::Close`] a connection that
//!   sent garbage.
//! - [`poll_mesh`](MsgShard::poll_mesh): a message for another shard, to hand to the
//!   mesh [`Endpoint`] (`send`, then `flush` once per turn;
//!   whatever it sheds comes back through `handle_shed`).
//!
//! Or let the shard's [`Endpoint`] do both mesh directions:
//! [`recv_mesh`](MsgShard::recv_mesh) at the start of a turn (and on the tick),
//! [`flush_mesh`](MsgShard::flush_mesh) at its end, before draining `poll_output` (a
//! request the mesh shed becomes an `overloaded` error to send).
//!
//! # How `server::shard` wires it
//!
//! 1. Start-up: `mesh::build::<MeshMsg>(bells, cfg.msg.ring_depth,
//!    cfg.msg.ring_full_wait)` with one doorbell per shard (each shard's
//!    `server::ring::Bell` is a [`Doorbell`](super::mesh::Doorbell)); shard `i` takes endpoint `i` and
//!    `MsgShard::new(i, shards, &cfg.msg, seed)` (seed: start time mixed with `i`).
//!    Add `wsgate.v1.json` to the subprotocols the handshake selects.
//! 2. Upgrade done: `ConnId` = the connection's slab key (`crate::slab::Key`);
//!    `handle_connect(conn, &identity, Encoding::from_subprotocol(selected)?, now)`.
//! 3. `Event::Message`: `handle_client_frame(conn, Text|Binary, bytes, now)`.
//! 4. Connection gone (any reason): `handle_disconnect(conn, now)`.
//! 5. Each turn (`on_wake`) and tick (`on_tick`, also `handle_tick`): `recv_mesh` first;
//!    at the end `flush_mesh`, then drain `poll_output` into the send queues
//!    (`Out::Frame(frame)`; a stale `ConnId` is simply dropped) and closes; if
//!    `endpoint.pending() > 0`, come back soon (ring the own bell or wait for the tick).
//! 6. Copy `metrics()` into the shard's published metrics each tick.
//!
//! Messages whose owner is this shard never touch a ring: they go through a local FIFO
//! that is processed before each `handle_*` returns, so the order between an owner and
//! the connections of its own shard is the same as across shards.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::Instant;

use super::api::{API_DISCONNECT_CLOSE, API_DISCONNECT_REASON, ApiOp, ApiReply, ApiRequest};
use super::local::LocalHub;
use super::mesh::{Endpoint, MeshMsg};
use super::owner::Owner;
use super::protocol::{self, ClientId, ClientMsg, Encoding, ErrorCode, FrameKind, ParseError};
use super::store::{MemStore, Store};
use super::{ConnId, Key, KeyKind, MsgLimits, MsgMetrics, ShardId, owner_of};
use crate::auth::Identity;
use crate::cluster::owner::ClusterOwner;
use crate::cluster::{Batch, Failed, Value};
use crate::proto::close::CloseCode;
use crate::proto::frame::SharedFrame;

/// Something a connection of this shard must be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Queue `frame` on `conn`.
    Send {
        /// The connection.
        conn: ConnId,
        /// The frame, shared with other recipients.
        frame: SharedFrame,
    },
    /// Close `conn` with `code` and `reason`: it does not speak the protocol. Call
    /// [`MsgShard::handle_disconnect`] once it is gone.
    Close {
        /// The connection.
        conn: ConnId,
        /// 1003 or 1008 (see `protocol`), 4000 (the backend API's disconnect), or 1013
        /// (with `--redis`: the connection could not be registered; try again later).
        code: CloseCode,
        /// A short reason.
        reason: &'static str,
    },
    /// Close `conn` with 1008 for the per-user limit and count it
    /// (`limit_hits{limit=`[`Output::user_limit_label`]`}`): a newer connection of its
    /// user replaced it (`replaced`), or it is the newer one and was refused. Call
    /// [`MsgShard::handle_disconnect`] once it is gone.
    UserLimit {
        /// The connection.
        conn: ConnId,
        /// It was replaced (else refused).
        replaced: bool,
    },
}

impl Output {
    /// The `limit_hits` label and the close reason of an [`Output::UserLimit`].
    pub fn user_limit_label(replaced: bool) -> (&'static str, &'static str) {
        if replaced {
            ("user_replaced", "replaced by a newer connection")
        } else {
            ("connections_per_user", "too many connections for this user")
        }
    }
}

/// One shard's messaging state. See the module docs for how to drive it.
#[derive(Debug)]
pub struct MsgShard<S = MemStore> {
    id: ShardId,
    shards: usize,
    limits: MsgLimits,
    owner: Owner<S>,
    hub: LocalHub,
    metrics: MsgMetrics,
    out: VecDeque<Output>,
    mesh_out: VecDeque<(ShardId, MeshMsg)>,
    /// Messages from this shard to itself, handled before each input returns.
    local: VecDeque<MeshMsg>,
    /// Scratch for the owner's answers.
    answers: Vec<(ShardId, MeshMsg)>,
    /// The owner's answers waiting for the journal: each with the journal position it
    /// needs durable, in the order produced.
    held: VecDeque<(u64, ShardId, MeshMsg)>,
    /// How far the journal is durable (see [`on_durable`](Self::on_durable)).
    durable: u64,
    /// With `--redis`: the owner side that keeps sequences, logs and the registry in
    /// Redis. Owner messages go to it instead of `owner` (see [`crate::cluster::owner`]).
    cluster: Option<Box<ClusterOwner>>,
    buf: Vec<u8>,
}

impl MsgShard<MemStore> {
    /// Shard `id` of `shards` with the in-memory store.
    pub fn new(id: ShardId, shards: usize, limits: &MsgLimits, epoch_seed: u64) -> Self {
        Self::with_store(id, shards, limits, MemStore::new(limits), epoch_seed)
    }
}

impl<S: Store> MsgShard<S> {
    /// Shard `id` of `shards` with `store` for its owner side.
    pub fn with_store(id: ShardId, shards: usize, limits: &MsgLimits, store: S, epoch_seed: u64) -> Self {
        // What the store recovered is durable: a journal that ends at byte N after
        // recovery is durable up to N, or the first answer would wait for a write that
        // nothing else asks for (the welcome of a user known before a restart did).
        let durable = store.journal_end();
        Self {
            id,
            shards,
            limits: limits.clone(),
            owner: Owner::new(id, shards, limits, store, epoch_seed),
            hub: LocalHub::new(),
            metrics: MsgMetrics::default(),
            out: VecDeque::new(),
            mesh_out: VecDeque::new(),
            local: VecDeque::new(),
            answers: Vec::new(),
            held: VecDeque::new(),
            durable,
            cluster: None,
            buf: Vec::new(),
        }
    }

    /// Makes this shard a node of a fleet: owner messages go to `cluster` from now on.
    pub fn attach_cluster(&mut self, cluster: ClusterOwner) {
        self.cluster = Some(Box::new(cluster));
    }

    /// The cluster owner, when attached (gauges, tests).
    pub fn cluster(&self) -> Option<&ClusterOwner> {
        self.cluster.as_deref()
    }

    /// The Redis commands this shard's turn produced, one batch per connection (see
    /// [`ClusterOwner::take_batches`]); `generations` are the connections' handshake
    /// counts.
    pub fn take_cluster_batches(&mut self, generations: &[u64]) -> Vec<(u64, usize, Batch)> {
        self.cluster
            .as_mut()
            .map(|c| c.take_batches(generations))
            .unwrap_or_default()
    }

    /// The shard is finishing: the cluster owner says the node is leaving (see
    /// [`ClusterOwner::leave`]).
    pub fn leave_cluster(&mut self) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.leave();
        }
    }

    /// The replies of cluster batch `id` (or why there are none).
    pub fn handle_cluster_replies(&mut self, id: u64, replies: Result<Vec<Value>, Failed>, now: Instant) {
        let Some(cluster) = self.cluster.as_mut() else { return };
        let mut answers = std::mem::take(&mut self.answers);
        cluster.on_replies(id, replies, &mut answers, &mut self.metrics);
        for (to, msg) in answers.drain(..) {
            self.dispatch_to(to, msg);
        }
        self.answers = answers;
        self.run_local(now);
    }

    /// A pub/sub message from Redis.
    pub fn handle_cluster_push(&mut self, push: &Value, now: Instant) {
        let Some(cluster) = self.cluster.as_mut() else { return };
        let mut answers = std::mem::take(&mut self.answers);
        cluster.on_push(push, &mut answers, &mut self.metrics);
        for (to, msg) in answers.drain(..) {
            self.dispatch_to(to, msg);
        }
        self.answers = answers;
        self.run_local(now);
    }

    /// The journal is durable up to `upto` (bytes): the owner's answers that waited for
    /// it go out, in order.
    pub fn on_durable(&mut self, upto: u64, now: Instant) {
        self.durable = self.durable.max(upto);
        while self.held.front().is_some_and(|(needs, _, _)| *needs <= self.durable) {
            let (_, to, msg) = self.held.pop_front().expect("front checked");
            self.dispatch_to(to, msg);
        }
        self.run_local(now);
    }

    /// Owner answers waiting for the journal (a gauge).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Sends the owner's answers on, or holds them until the journal is durable up to
    /// where the owner's store has written: an ack, a delivery or an API answer never
    /// leaves before the change it reports is durable, and later answers queue behind
    /// earlier ones so the order stays the owner's.
    ///
    /// Refusals (`storage_full`, `owner_full`) report no change: they leave at once, also
    /// ahead of held answers, so a client hears "retry later" while the disk is failing
    /// instead of waiting on writes that cannot finish.
    fn release_or_hold(&mut self, answers: &mut Vec<(ShardId, MeshMsg)>) {
        let end = self.owner.store().journal_end();
        if end > self.durable || !self.held.is_empty() {
            self.held.extend(answers.drain(..).map(|(to, msg)| (end, to, msg)));
        } else {
            for (to, msg) in answers.drain(..) {
                self.dispatch_to(to, msg);
            }
        }
        self.owner.take_refusals(answers);
        for (to, msg) in answers.drain(..) {
            self.dispatch_to(to, msg);
        }
    }

    /// This shard's index.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Counters so far.
    pub fn metrics(&self) -> &MsgMetrics {
        &self.metrics
    }

    /// The local side (gauges, tests).
    pub fn hub(&self) -> &LocalHub {
        &self.hub
    }

    /// The owner side (gauges, tests).
    pub fn owner(&self) -> &Owner<S> {
        &self.owner
    }

    /// The owner side, mutably (tests that simulate a restart).
    pub fn owner_mut(&mut self) -> &mut Owner<S> {
        &mut self.owner
    }

    /// The next frame or close for a local connection.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next message for another shard's ring.
    pub fn poll_mesh(&mut self) -> Option<(ShardId, MeshMsg)> {
        self.mesh_out.pop_front()
    }

    /// A connection of `identity`'s user is open (upgraded) with `encoding`. Its
    /// `welcome` follows once the user's owner registered it.
    pub fn handle_connect(&mut self, conn: ConnId, identity: &Identity, encoding: Encoding, now: Instant) {
        let user = self.hub.add(conn, identity, encoding);
        self.route(KeyKind::User, user.clone(), MeshMsg::Connect { user, conn });
        self.run_local(now);
    }

    /// A connection is gone: its user's owner and its rooms' owners hear about it.
    pub fn handle_disconnect(&mut self, conn: ConnId, now: Instant) {
        let Some(removed) = self.hub.remove(conn) else {
            return;
        };
        for (room, presence) in removed.rooms {
            let user = removed.user.clone();
            self.route(KeyKind::Room, room.clone(), MeshMsg::Leave { room, user, presence });
        }
        let user = removed.user;
        self.route(KeyKind::User, user.clone(), MeshMsg::Disconnect { user, conn });
        self.run_local(now);
    }

    /// A whole message from `conn` (text already UTF-8-validated by the frame layer).
    pub fn handle_client_frame(&mut self, conn: ConnId, kind: FrameKind, payload: &[u8], now: Instant) {
        let Some(info) = self.hub.conn(conn) else {
            debug_assert!(false, "frame from unknown connection {conn:?}");
            return;
        };
        let user = info.user.clone();
        let msg = match protocol::parse(kind, payload, &self.limits) {
            Ok(msg) => msg,
            Err(ParseError::Garbage { code, reason }) => {
                self.metrics.protocol_closes += 1;
                self.out.push_back(Output::Close { conn, code, reason });
                return;
            }
            Err(ParseError::Invalid { code, id, detail }) => {
                self.error(conn, code, &detail, id.as_ref());
                return;
            }
        };
        self.on_client_msg(conn, user, msg);
        self.run_local(now);
    }

    fn on_client_msg(&mut self, conn: ConnId, user: Key, msg: ClientMsg<'_>) {
        match msg {
            ClientMsg::Send { to, id, body } => {
                let to: Key = to.as_ref().into();
                let msg = MeshMsg::Send {
                    to: to.clone(),
                    from: user,
                    conn,
                    id,
                    body: body.get().into(),
                };
                self.route(KeyKind::User, to, msg);
            }
            ClientMsg::Join {
                room,
                id,
                since,
                presence,
            } => {
                let room: Key = room.as_ref().into();
                let ticket = match self
                    .hub
                    .begin_join(conn, &room, presence, self.limits.max_rooms_per_connection)
                {
                    Ok(ticket) => ticket,
                    Err(code) => return self.error(conn, code, "join refused", id.as_ref()),
                };
                let msg = MeshMsg::Join {
                    room: room.clone(),
                    user,
                    conn,
                    since,
                    presence,
                    id,
                    ticket,
                };
                self.route(KeyKind::Room, room, msg);
            }
            ClientMsg::Leave { room, id } => match self.hub.leave(conn, &room) {
                Ok(presence) => {
                    let room: Key = room.as_ref().into();
                    let frame = self.encode(|o| protocol::encode_left(o, id.as_ref(), &room));
                    self.send(conn, frame);
                    self.route(KeyKind::Room, room.clone(), MeshMsg::Leave { room, user, presence });
                }
                Err(code) => self.error(conn, code, "not in this room", id.as_ref()),
            },
            ClientMsg::Publish {
                room,
                id,
                body,
                exclude_self,
            } => {
                let allowed = self.hub.may_publish(conn, &room);
                if !allowed {
                    return self.error(
                        conn,
                        ErrorCode::Forbidden,
                        "publish not allowed by the token",
                        id.as_ref(),
                    );
                }
                let room: Key = room.as_ref().into();
                let msg = MeshMsg::Publish {
                    room: room.clone(),
                    from: user,
                    conn,
                    id,
                    body: body.get().into(),
                    exclude_self,
                };
                self.route(KeyKind::Room, room, msg);
            }
            ClientMsg::Ack { seq, id } => {
                self.route(KeyKind::User, user.clone(), MeshMsg::Ack { user, seq, conn, id });
            }
            ClientMsg::Resume { since, id } => {
                self.hub.begin_resume(conn);
                let msg = MeshMsg::Resume {
                    user: user.clone(),
                    conn,
                    since,
                    id,
                };
                self.route(KeyKind::User, user, msg);
            }
            ClientMsg::PresenceUser { user: target, id } => {
                let target: Key = target.as_ref().into();
                self.route(
                    KeyKind::User,
                    target.clone(),
                    MeshMsg::QueryUser { user: target, conn, id },
                );
            }
            ClientMsg::PresenceRoom { room, id } => {
                let room: Key = room.as_ref().into();
                self.route(KeyKind::Room, room.clone(), MeshMsg::QueryRoom { room, conn, id });
            }
            // Answered here, on the connection's shard: a liveness check must not wait on
            // an owner, a ring or (with `--redis`) Redis, and costs one small frame.
            ClientMsg::Ping { id } => {
                let frame = self.encode(|o| protocol::encode_pong(o, id.as_ref()));
                self.send(conn, frame);
            }
        }
    }

    /// Hands every message for other shards to `endpoint` (`send`, then `flush`, which
    /// rings the peers' doorbells) and answers what it sheds. Call at the end of a
    /// turn, then drain [`poll_output`](Self::poll_output) (a shed request's
    /// `overloaded` error is a new output).
    pub fn flush_mesh(&mut self, endpoint: &mut Endpoint<MeshMsg>, now: Instant) {
        while let Some((to, msg)) = self.mesh_out.pop_front() {
            if let Err(msg) = endpoint.send(to, msg, now) {
                self.handle_shed(to, msg);
            }
        }
        let mut shed = Vec::new();
        endpoint.flush(now, &mut shed);
        for (to, msg) in shed {
            self.handle_shed(to, msg);
        }
    }

    /// Takes up to `max_per_source` messages off each ring of `endpoint` and handles
    /// them; returns how many. Call at the start of a turn and on the tick.
    pub fn recv_mesh(&mut self, endpoint: &mut Endpoint<MeshMsg>, now: Instant, max_per_source: usize) -> usize {
        endpoint.recv(max_per_source, |from, msg| self.handle_mesh(from, msg, now))
    }

    /// A message from shard `from` (off a ring).
    pub fn handle_mesh(&mut self, from: ShardId, msg: MeshMsg, now: Instant) {
        self.metrics.mesh_received += 1;
        self.dispatch(from, msg, now);
        self.run_local(now);
    }

    /// The mesh shed `msg` on its way to `to`: a request from a local connection is
    /// answered with `overloaded`; anything else is only counted (deliveries leave a
    /// sequence gap the client recovers from).
    pub fn handle_shed(&mut self, to: ShardId, msg: MeshMsg) {
        let _ = to;
        self.metrics.mesh_shed += 1;
        let (conn, id) = match msg {
            MeshMsg::Api(request) => return request.answer(ApiReply::Overloaded),
            MeshMsg::Send { conn, id, .. }
            | MeshMsg::Publish { conn, id, .. }
            | MeshMsg::Ack { conn, id, .. }
            | MeshMsg::QueryUser { conn, id, .. }
            | MeshMsg::QueryRoom { conn, id, .. } => (conn, id),
            _ => return,
        };
        if self.hub.conn(conn).is_some() {
            self.error(
                conn,
                ErrorCode::Overloaded,
                "the gateway is overloaded; retry",
                id.as_ref(),
            );
        }
    }

    /// A request from the backend API (`crate::admin`, through the server's shard
    /// inbox). Publish, send and presence go to the owner of the room or user, like a
    /// client's request, and the owner answers on the request's channel. Disconnect
    /// closes this shard's connections of the user ([`Output::Close`] with
    /// [`API_DISCONNECT_CLOSE`]; call [`handle_disconnect`](Self::handle_disconnect)
    /// for each once gone, as for any close) and answers how many: the admin side
    /// sends it to every shard.
    pub fn handle_api(&mut self, request: ApiRequest, now: Instant) {
        match &request.op {
            ApiOp::Publish { room, .. } | ApiOp::PresenceRoom { room } => {
                let room = room.clone();
                self.route(KeyKind::Room, room, MeshMsg::Api(Box::new(request)));
            }
            ApiOp::Send { to: user, .. } | ApiOp::PresenceUser { user } => {
                let user = user.clone();
                self.route(KeyKind::User, user, MeshMsg::Api(Box::new(request)));
            }
            ApiOp::Disconnect { user } => {
                let closed = self.disconnect_user(user);
                // In a fleet, the user's owner shard on this node also tells the other
                // nodes with connections of the user (they close theirs when it arrives).
                if let Some(cluster) = self.cluster.as_mut()
                    && owner_of(KeyKind::User, user, self.shards) == self.id
                {
                    cluster.disconnect_elsewhere(user);
                }
                request.answer(ApiReply::Disconnected { shard: self.id, closed });
            }
        }
        self.run_local(now);
    }

    /// Closes this shard's connections of `user` with 4000 (the backend's disconnect);
    /// returns how many.
    fn disconnect_user(&mut self, user: &str) -> u64 {
        let mut closed = 0;
        let out = &mut self.out;
        self.hub.for_each_conn_of(user, |conn| {
            closed += 1;
            out.push_back(Output::Close {
                conn,
                code: API_DISCONNECT_CLOSE,
                reason: API_DISCONNECT_REASON,
            });
        });
        self.metrics.api_disconnects += closed;
        closed
    }

    /// The timer tick: the owner's counts for large rooms, history and offline ageing.
    pub fn handle_tick(&mut self, now: Instant) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.tick(now);
        }
        let mut answers = std::mem::take(&mut self.answers);
        self.owner.handle_tick(now, &mut answers, &mut self.metrics);
        self.release_or_hold(&mut answers);
        self.answers = answers;
        self.run_local(now);
    }

    /// Sends `msg` to the owner of `key`.
    fn route(&mut self, kind: KeyKind, key: Key, msg: MeshMsg) {
        let to = owner_of(kind, &key, self.shards);
        self.dispatch_to(to, msg);
    }

    fn dispatch_to(&mut self, to: ShardId, msg: MeshMsg) {
        if to == self.id {
            self.local.push_back(msg);
        } else {
            self.metrics.mesh_sent += 1;
            self.mesh_out.push_back((to, msg));
        }
    }

    fn run_local(&mut self, now: Instant) {
        while let Some(msg) = self.local.pop_front() {
            self.dispatch(self.id, msg, now);
        }
    }

    fn dispatch(&mut self, from: ShardId, msg: MeshMsg, now: Instant) {
        match msg {
            MeshMsg::Welcome { conn, frames } => {
                if self.hub.welcomed(conn) {
                    self.metrics.frames_delivered += frames.len() as u64;
                    for frame in frames {
                        self.out.push_back(Output::Send { conn, frame });
                    }
                }
            }
            MeshMsg::Resumed { conn, frames } => {
                if self.hub.resumed(conn) {
                    self.metrics.frames_delivered += frames.len() as u64;
                    for frame in frames {
                        self.out.push_back(Output::Send { conn, frame });
                    }
                }
            }
            MeshMsg::Joined {
                conn,
                room,
                ticket,
                frames,
            } => {
                if self.hub.joined(conn, &room, ticket) {
                    self.metrics.frames_delivered += frames.len() as u64;
                    for frame in frames {
                        self.out.push_back(Output::Send { conn, frame });
                    }
                }
            }
            MeshMsg::DisconnectUser { user } => {
                self.disconnect_user(&user);
            }
            MeshMsg::Refused { conn, reason } => {
                if self.hub.conn(conn).is_some() {
                    self.out.push_back(Output::Close {
                        conn,
                        code: CloseCode::TRY_AGAIN_LATER,
                        reason,
                    });
                }
            }
            MeshMsg::UserLimit { conn, replaced } => {
                if self.hub.conn(conn).is_some() {
                    self.out.push_back(Output::UserLimit { conn, replaced });
                }
            }
            MeshMsg::ToConn { conn, frame } => {
                if self.hub.conn(conn).is_some() {
                    self.send(conn, frame);
                }
            }
            MeshMsg::ToUser { user, frame } => {
                let out = &mut self.out;
                let mut n = 0;
                let skipped = self.hub.for_user(&user, |conn| {
                    n += 1;
                    out.push_back(Output::Send {
                        conn,
                        frame: frame.clone(),
                    });
                });
                self.metrics.frames_delivered += n;
                self.metrics.superseded_deliveries += skipped;
            }
            MeshMsg::ToRoom {
                room,
                frame,
                exclude,
                watchers_only,
            } => {
                let out = &mut self.out;
                let mut n = 0;
                self.hub.for_room(&room, exclude, watchers_only, |conn| {
                    n += 1;
                    out.push_back(Output::Send {
                        conn,
                        frame: frame.clone(),
                    });
                });
                self.metrics.frames_delivered += n;
            }
            MeshMsg::ApiAnswer(answer) => {
                let (request, reply) = *answer;
                request.answer(reply);
            }
            owner_msg => {
                let mut answers = std::mem::take(&mut self.answers);
                if let Some(cluster) = self.cluster.as_mut() {
                    // Answered when Redis replies (`handle_cluster_replies`), but for
                    // the per-user limit's closes.
                    cluster.handle(from, owner_msg, &mut answers);
                    for (to, msg) in answers.drain(..) {
                        self.dispatch_to(to, msg);
                    }
                } else {
                    self.owner.handle(from, owner_msg, now, &mut answers, &mut self.metrics);
                    self.release_or_hold(&mut answers);
                }
                self.answers = answers;
            }
        }
    }

    fn encode(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> SharedFrame {
        self.buf.clear();
        encode(&mut self.buf);
        SharedFrame::text(std::str::from_utf8(&self.buf).expect("encoders write UTF-8"))
    }

    fn send(&mut self, conn: ConnId, frame: SharedFrame) {
        self.metrics.frames_delivered += 1;
        self.out.push_back(Output::Send { conn, frame });
    }

    fn error(&mut self, conn: ConnId, code: ErrorCode, text: &str, id: Option<&ClientId>) {
        self.metrics.client_errors += 1;
        *self.metrics.errors_by_code.entry(code.label()).or_insert(0) += 1;
        let frame = self.encode(|o| protocol::encode_error(o, code, text, id));
        self.send(conn, frame);
    }
}
