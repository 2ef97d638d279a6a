//! [`ClusterOwner`]: the owner side of a shard when the gateway runs as one node of a
//! fleet (`--redis`). Sans-IO like `msg::owner::Owner`, whose place it takes: it gets
//! the same owner messages from the mesh and answers with the same local-side messages,
//! but the state that must be one across the fleet lives in Redis (see the module docs
//! of [`super`], "Keys and functions"), so each request becomes a Redis command and its
//! answer comes when the reply does.
//!
//! What stays here, per shard and node: the local directory (which shards of this node
//! have connections of a user, or members of a room), which is what a push from Redis
//! needs to reach the right connections, and the counts the registry needs.
//!
//! # Driving it
//!
//! - [`handle`](ClusterOwner::handle): an owner message (from `MsgShard`).
//! - [`take_batches`](ClusterOwner::take_batches): the commands this turn produced, one
//!   [`Batch`] per Redis connection (one server, or each master of a Redis Cluster),
//!   each with an id; hand each to its [`super::Redis`] and, when its replies come (or
//!   it was refused), call [`on_replies`](ClusterOwner::on_replies).
//! - [`on_push`](ClusterOwner::on_push): a pub/sub message from the first connection.
//! - [`tick`](ClusterOwner::tick): renews the node's liveness and learns the live nodes.
//!
//! Answers for local shards go into the `out` vector of `on_replies` and `on_push`, like
//! the local owner's.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use super::conn::{Batch, Failed};
use super::resp::Value;
use super::topology::Topology;
use crate::msg::api::{ApiOp, ApiReply, ApiRequest};
use crate::msg::mesh::MeshMsg;
use crate::msg::owner::{Admit, UserShards};
use crate::msg::protocol::{self, AckOf, ClientId, Encoding, ErrorCode, ResyncReason};
use crate::msg::{ConnId, Key, KeyKind, MsgLimits, MsgMetrics, Position, ShardId, owner_of};
use crate::proto::frame::SharedFrame;

/// The function library, loaded on every connect (`FUNCTION LOAD REPLACE`).
pub const FUNCTIONS: &str = include_str!("functions.lua");

/// The sorted set of live nodes (member: node id, score: expiry in ms).
pub const NODES_KEY: &str = "wsg:nodes";

/// What the owner says when Redis did not answer.
const UNAVAILABLE: &str = "the cluster store (Redis) is unavailable; retry later";

/// A node id: 1 to 64 bytes of `A-Z a-z 0-9 . _ : -`, the same on every restart of the
/// node (its previous life's registry entries are found by it).
pub fn check_node_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "node id {id:?}: 1 to 64 bytes of letters, digits, '.', '_', ':' or '-'"
        ))
    }
}

/// How this node takes part in the fleet.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node's id (see [`check_node_id`]).
    pub node: Arc<str>,
    /// How long the node stays in the live set without renewing it; a node killed
    /// without a drain leaves presence within this.
    pub node_ttl: Duration,
    /// One Redis, or a Redis Cluster's masters and slots.
    pub topology: Topology,
}

/// Counters of the cluster side of one shard (copied into the shard's metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Requests answered `unavailable` (or an API 503) because Redis did not answer.
    pub unavailable: u64,
    /// Pub/sub messages received.
    pub pushes: u64,
    /// Inbox messages that reached this node after the user left it, queued offline
    /// again.
    pub requeued: u64,
    /// Registry entries a previous life of this node left, removed at start.
    pub cleaned: u64,
    /// Error replies from Redis (each also fails its request).
    pub error_replies: u64,
    /// Inbox messages pushed while a connect waited for its reply that did not fit the
    /// hand-over bound (`offline_max_messages`); the client recovers them with `resume`.
    pub early_dropped: u64,
    /// Gauge: nodes in the live set, this one included.
    pub live_nodes: u64,
}

/// A join's read, waiting for its room's subscription (Redis Cluster).
#[derive(Debug)]
struct DeferredJoin {
    op: Op,
    key: String,
    args: [String; 3],
}

/// Where an answer goes.
#[derive(Debug)]
enum ReplyTo {
    Conn(ShardId, ConnId, Option<ClientId>),
    Api(Box<ApiRequest>),
}

/// What a command's reply is for, in command order.
#[derive(Debug)]
enum Op {
    /// Nothing to do with the reply (an error is counted).
    Ignore,
    /// `FUNCTION LOAD`, first on every new connection: if it does not run, the whole
    /// set-up of that connection is redone with its next batch.
    Setup {
        conn: usize,
    },
    Alive,
    Cleanup,
    /// `generation`: the connection set-up it was sent after (a later set-up registered
    /// the connection again, whatever became of this call).
    Connect {
        from: ShardId,
        conn: ConnId,
        user: Key,
        generation: u64,
    },
    Send {
        to: Key,
        reply: ReplyTo,
    },
    Ack {
        from: ShardId,
        conn: ConnId,
        user: Key,
        seq: u64,
        id: Option<ClientId>,
    },
    Receipt,
    /// An offline-queue entry written from the history; `ack`: the send whose answer
    /// waits for it (a dead node's registry entry made it), so that whoever connects
    /// after the sender saw the ack finds the message in the welcome.
    Requeue {
        ack: Option<Box<(Key, Position, ReplyTo)>>,
    },
    Resume {
        from: ShardId,
        conn: ConnId,
        id: Option<ClientId>,
        since: Position,
    },
    Join {
        from: ShardId,
        conn: ConnId,
        room: Key,
        id: Option<ClientId>,
        since: Option<Position>,
        ticket: u32,
    },
    Member {
        room: Key,
        user: Key,
        joined: bool,
    },
    /// The PING after a room's `SUBSCRIBE` on a Redis Cluster: the joins waiting for
    /// the subscription read the room once it is answered.
    Subscribed {
        room: Key,
    },
    Publish {
        room: Key,
        reply: ReplyTo,
    },
    QueryUser {
        user: Key,
        reply: ReplyTo,
    },
    QueryRoom {
        room: Key,
        reply: ReplyTo,
    },
}

#[derive(Debug, Default)]
struct LocalUser {
    /// Shards of this node with connections of the user, and how many (inline while
    /// on one).
    shards: UserShards,
    /// On a Redis Cluster: connects waiting for their reply, and the inbox messages
    /// pushed meanwhile (seq, frame). The reply comes on the user's master's
    /// connection, pushes on the subscriber connection, so a message sequenced after
    /// the connect can arrive before its `welcome`; it is handed to the new connection
    /// after the welcome instead of being dropped as covered by it.
    connecting: u32,
    /// Boxed: held only while a connect waits on a Redis Cluster, so an idle user pays
    /// a pointer, not a `Vec`.
    #[allow(clippy::box_collection)]
    early: Option<Box<Vec<(u64, SharedFrame)>>>,
    /// Connections Redis was told about (a connect refused while Redis was away is
    /// not; the registry is set again when it comes back).
    registered: u32,
}

// What each user connected to this node costs beside its map entry.
const _: () = assert!(size_of::<LocalUser>() <= 32);

impl LocalUser {
    fn connections(&self) -> u32 {
        // At most `max_connections` per node: fits.
        self.shards.connections() as u32
    }
}

#[derive(Debug, Default)]
struct LocalRoom {
    /// Shards with member connections: (shard, connections, watchers).
    shards: Vec<(ShardId, u32, u32)>,
    /// Member users here and their member connections.
    users: HashMap<Key, u32>,
}

/// The cluster owner of one shard. See the module docs.
#[derive(Debug)]
pub struct ClusterOwner {
    shard: ShardId,
    shards: usize,
    limits: MsgLimits,
    node: Arc<str>,
    node_ttl: Duration,
    /// `<node>/<shard>`: this shard's registry field.
    field: String,
    /// `wsg:n:<node>/<shard>`: its channel.
    channel: String,
    /// `wsg:t:<node>/<shard>`: what it wrote that a restart must undo.
    tracking: String,
    users: HashMap<Key, LocalUser>,
    rooms: HashMap<Key, LocalRoom>,
    /// The live nodes, joined by '\n' (the `wsg_connect` argument), and as a list.
    live_arg: String,
    live: Vec<Box<str>>,
    /// Where each key's commands go: connection `i` talks to `topology.masters[i]`.
    topology: Topology,
    /// Per connection: the commands of this turn and what each reply is for.
    pending: Vec<(Batch, Vec<Op>)>,
    inflight: HashMap<u64, Vec<Op>>,
    next_batch: u64,
    /// Per connection: the generation (`RedisStats::connects`) last set up on.
    generations: Vec<u64>,
    cleaned_up: bool,
    last_alive: Option<Instant>,
    /// Large rooms whose member count changed here, and the count, for the next tick.
    counts_due: Vec<(Key, u64)>,
    /// [`leave`](Self::leave) was called.
    left: bool,
    /// Rooms whose subscription is not confirmed yet (Redis Cluster), and the joins
    /// waiting for it.
    deferred_joins: HashMap<Key, Vec<DeferredJoin>>,
    epoch_seed: u64,
    epochs_made: u64,
    stats: ClusterStats,
    buf: Vec<u8>,
}

fn key_of(kind: KeyKind, name: &str) -> String {
    match kind {
        KeyKind::User => format!("wsg:{{u:{name}}}"),
        KeyKind::Room => format!("wsg:{{r:{name}}}"),
    }
}

/// The room a room channel (`wsg:{r:<room>}`) is for.
fn room_of_channel(channel: &[u8]) -> Option<&str> {
    let name = channel.strip_prefix(b"wsg:{r:")?.strip_suffix(b"}")?;
    std::str::from_utf8(name).ok()
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Integer(n) => Some(*n),
        Value::Bulk(b) | Value::Simple(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    std::str::from_utf8(v.as_bytes()?).ok()
}

/// Splits `"<ms> <frame>"`.
fn entry(bytes: &[u8]) -> Option<(u64, &str)> {
    let space = bytes.iter().position(|&b| b == b' ')?;
    let ms = std::str::from_utf8(&bytes[..space]).ok()?.parse().ok()?;
    Some((ms, std::str::from_utf8(&bytes[space + 1..]).ok()?))
}

/// The `seq` of an inbox message's JSON (0 if it has none).
fn seq_of(frame: &str) -> u64 {
    frame
        .find("\"seq\":")
        .and_then(|at| {
            let digits = &frame[at + 6..];
            let end = digits.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
            digits[..end].parse().ok()
        })
        .unwrap_or(0)
}

/// Splits `"<len>:<name><rest>"` (the user of a `u` or `U` push).
fn length_prefixed(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let colon = bytes.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&bytes[..colon]).ok()?.parse().ok()?;
    let rest = &bytes[colon + 1..];
    if rest.len() < len {
        return None;
    }
    Some((std::str::from_utf8(&rest[..len]).ok()?, &rest[len..]))
}

impl ClusterOwner {
    /// The cluster owner of shard `shard` of `shards`.
    pub fn new(shard: ShardId, shards: usize, limits: &MsgLimits, cluster: &ClusterConfig, epoch_seed: u64) -> Self {
        let field = format!("{}/{shard}", cluster.node);
        Self {
            shard,
            shards,
            limits: limits.clone(),
            node: cluster.node.clone(),
            node_ttl: cluster.node_ttl,
            channel: format!("wsg:n:{field}"),
            tracking: format!("wsg:t:{field}"),
            field,
            users: HashMap::new(),
            rooms: HashMap::new(),
            live_arg: cluster.node.to_string(),
            live: vec![cluster.node.as_ref().into()],
            pending: cluster
                .topology
                .masters
                .iter()
                .map(|_| (Batch::new(), Vec::new()))
                .collect(),
            generations: vec![0; cluster.topology.masters.len()],
            topology: cluster.topology.clone(),
            inflight: HashMap::new(),
            next_batch: 1,
            cleaned_up: false,
            last_alive: None,
            counts_due: Vec::new(),
            left: false,
            deferred_joins: HashMap::new(),
            epoch_seed,
            epochs_made: 0,
            stats: ClusterStats::default(),
            buf: Vec::new(),
        }
    }

    /// The counters so far (`live_nodes` is a gauge).
    pub fn stats(&self) -> ClusterStats {
        ClusterStats {
            live_nodes: self.live.len() as u64,
            ..self.stats
        }
    }

    /// Users with connections on this shard's directory (gauge).
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Rooms with members on this node in this shard's directory (gauge).
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    fn new_epoch(&mut self) -> u64 {
        self.epochs_made += 1;
        crate::msg::new_epoch(self.epoch_seed, self.epochs_made, self.shard)
    }

    fn cmd_on(&mut self, conn: usize, op: Op, args: &[&[u8]]) {
        let (batch, ops) = &mut self.pending[conn];
        batch.cmd(args);
        ops.push(op);
    }

    /// A command whose first argument is its key (or channel), on that key's connection.
    fn cmd(&mut self, op: Op, args: &[&[u8]]) {
        let conn = self.topology.route(args[1]);
        self.cmd_on(conn, op, args);
    }

    /// `FCALL name 1 key args...`, on the key's connection.
    fn fcall(&mut self, op: Op, name: &str, key: &str, args: &[&[u8]]) {
        let mut all: Vec<&[u8]> = Vec::with_capacity(4 + args.len());
        all.extend_from_slice(&[b"FCALL", name.as_bytes(), b"1", key.as_bytes()]);
        all.extend_from_slice(args);
        let conn = self.topology.route(key.as_bytes());
        self.cmd_on(conn, op, &all);
    }

    /// `SUBSCRIBE` / `UNSUBSCRIBE`: on the first connection (classic pub/sub reaches
    /// every node of a Redis Cluster, so one subscriber connection hears every publish).
    fn subscription(&mut self, verb: &[u8], channel: &[u8]) {
        self.pending[0].0.cmd_unanswered(&[verb, channel]);
    }

    fn frame(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> SharedFrame {
        self.buf.clear();
        encode(&mut self.buf);
        SharedFrame::text(std::str::from_utf8(&self.buf).expect("encoders write UTF-8"))
    }

    /// Encodes a message with seq 0 and splits it around the seq: the function puts the
    /// real one in between.
    fn split_frame(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> (Vec<u8>, Vec<u8>) {
        self.buf.clear();
        encode(&mut self.buf);
        // `"seq":` cannot occur inside a JSON string (its closing quote would be
        // escaped), so the first one is the field.
        let at = self
            .buf
            .windows(7)
            .position(|w| w == b"\"seq\":0")
            .expect("messages carry a seq")
            + 6;
        (self.buf[..at].to_vec(), self.buf[at + 1..].to_vec())
    }

    fn ttl_ms(&self) -> String {
        let ttl = self.limits.history_max_age.max(self.limits.offline_max_age);
        ttl.as_millis().max(1).to_string()
    }

    fn error(&mut self, code: ErrorCode, text: &str, id: Option<&ClientId>, m: &mut MsgMetrics) -> SharedFrame {
        m.client_errors += 1;
        *m.errors_by_code.entry(code.label()).or_insert(0) += 1;
        self.frame(|o| protocol::encode_error(o, code, text, id))
    }

    /// Handles an owner message from shard `from` of this node: it becomes Redis
    /// commands for the next [`take_batches`](Self::take_batches); the answers come with the
    /// replies. The per-user limit's closes (kept per node, like the directory) need no
    /// Redis and go into `out` at once.
    pub fn handle(&mut self, from: ShardId, msg: MeshMsg, out: &mut Vec<(ShardId, MeshMsg)>) {
        if self.left {
            // The shard has taken its entries back and is stopping; a backend waiting
            // on an answer hears so rather than timing out.
            if let MeshMsg::Api(request) = msg {
                request.answer(ApiReply::Unavailable);
            }
            return;
        }
        match msg {
            MeshMsg::Connect { user, conn } => {
                let entry = self.users.entry(user.clone()).or_default();
                let first = entry.connections() == 0;
                match entry.shards.add(from, conn, self.limits.user_limit()) {
                    Admit::Admitted => {}
                    Admit::Replacing(victim) => {
                        let conn = victim.conn;
                        out.push((victim.shard, MeshMsg::UserLimit { conn, replaced: true }));
                    }
                    Admit::Refused => {
                        out.push((from, MeshMsg::UserLimit { conn, replaced: false }));
                        return;
                    }
                }
                entry.registered += 1;
                entry.connecting += 1;
                if first {
                    self.track(b"HSET", &format!("u\n{user}"), Some(b"1"));
                }
                let epoch = self.new_epoch().to_string();
                let key = key_of(KeyKind::User, &user);
                let (field, live) = (self.field.clone(), self.live_arg.clone());
                let generation = self.generations[self.topology.route(key_of(KeyKind::User, &user).as_bytes())];
                self.fcall(
                    Op::Connect {
                        from,
                        conn,
                        user,
                        generation,
                    },
                    "wsg_connect",
                    &key,
                    &[field.as_bytes(), epoch.as_bytes(), live.as_bytes()],
                );
            }
            MeshMsg::Disconnect { user, conn } => {
                let Some(entry) = self.users.get_mut(&user) else {
                    debug_assert!(false, "disconnect of unknown user {user}");
                    return;
                };
                if !entry.shards.remove(from, conn) {
                    // A connection the per-user limit refused was never counted.
                    return;
                }
                let left = entry.connections();
                let tell = entry.registered > left;
                if tell {
                    entry.registered -= 1;
                }
                if left == 0 {
                    self.users.remove(&user);
                    self.track(b"HDEL", &format!("u\n{user}"), None);
                }
                if tell {
                    let key = key_of(KeyKind::User, &user);
                    let (field, ttl) = (self.field.clone(), self.ttl_ms());
                    self.fcall(
                        Op::Ignore,
                        "wsg_disconnect",
                        &key,
                        &[field.as_bytes(), b"1", ttl.as_bytes()],
                    );
                }
            }
            MeshMsg::Resume { user, conn, since, id } => {
                let epoch = self.new_epoch().to_string();
                let key = key_of(KeyKind::User, &user);
                let (since_seq, ttl) = (since.seq.to_string(), self.ttl_ms());
                self.fcall(
                    Op::Resume { from, conn, id, since },
                    "wsg_read",
                    &key,
                    &[epoch.as_bytes(), since_seq.as_bytes(), ttl.as_bytes()],
                );
            }
            MeshMsg::Send {
                to,
                from: sender,
                conn,
                id,
                body,
            } => self.send(to, Some(sender), ReplyTo::Conn(from, conn, id), &body),
            MeshMsg::Ack { user, seq, conn, id } => {
                let key = key_of(KeyKind::User, &user);
                let (seq_arg, ttl) = (seq.to_string(), self.ttl_ms());
                self.fcall(
                    Op::Ack {
                        from,
                        conn,
                        user,
                        seq,
                        id,
                    },
                    "wsg_ack",
                    &key,
                    &[seq_arg.as_bytes(), ttl.as_bytes()],
                );
            }
            MeshMsg::Receipt { to, by, seq, id } => {
                self.buf.clear();
                protocol::encode_receipt(&mut self.buf, &by, seq, id.as_ref());
                let frame = std::mem::take(&mut self.buf);
                let key = key_of(KeyKind::User, &to);
                let user = format!("{}:{to}", to.len());
                self.fcall(Op::Receipt, "wsg_deliver", &key, &[user.as_bytes(), &frame]);
                self.buf = frame;
            }
            MeshMsg::QueryUser { user, conn, id } => self.query_user(user, ReplyTo::Conn(from, conn, id)),
            MeshMsg::Join {
                room,
                user,
                conn,
                since,
                presence,
                id,
                ticket,
            } => {
                let entry = self.rooms.entry(room.clone()).or_default();
                let first_here = entry.users.is_empty();
                match entry.shards.iter_mut().find(|s| s.0 == from) {
                    Some(s) => {
                        s.1 += 1;
                        s.2 += u32::from(presence);
                    }
                    None => entry.shards.push((from, 1, u32::from(presence))),
                }
                let count = entry.users.entry(user.clone()).or_insert(0);
                *count += 1;
                let first_of_user = *count == 1;
                let key = key_of(KeyKind::Room, &room);
                let cluster = self.topology.slots.is_some();
                if first_here {
                    // Subscribed before the read below: a publish after the read is
                    // pushed after its reply. On a Redis Cluster the read runs on the
                    // room's master, another connection: it waits until the
                    // subscription is confirmed (the PING after it is answered).
                    self.subscription(b"SUBSCRIBE", key.as_bytes());
                    if cluster {
                        self.cmd_on(0, Op::Subscribed { room: room.clone() }, &[b"PING"]);
                        self.deferred_joins.entry(room.clone()).or_default();
                    }
                }
                self.membership(&room, &user, true, first_of_user);
                let epoch = self.new_epoch().to_string();
                let since_seq = since.map_or_else(|| "-1".to_owned(), |s| s.seq.to_string());
                let ttl = self.ttl_ms();
                let read = DeferredJoin {
                    op: Op::Join {
                        from,
                        conn,
                        room: room.clone(),
                        id,
                        since,
                        ticket,
                    },
                    key,
                    args: [epoch, since_seq, ttl],
                };
                match self.deferred_joins.get_mut(&room) {
                    Some(waiting) => waiting.push(read),
                    None => self.read_join(read),
                }
            }
            MeshMsg::Leave { room, user, presence } => {
                let Some(entry) = self.rooms.get_mut(&room) else {
                    debug_assert!(false, "leave of unknown room {room}");
                    return;
                };
                if let Some(i) = entry.shards.iter().position(|s| s.0 == from) {
                    let s = &mut entry.shards[i];
                    s.1 -= 1;
                    s.2 -= u32::from(presence);
                    if s.1 == 0 {
                        entry.shards.swap_remove(i);
                    }
                }
                let last_of_user = match entry.users.get_mut(&user) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    Some(_) => {
                        entry.users.remove(&user);
                        true
                    }
                    None => false,
                };
                let empty = entry.users.is_empty();
                let key = key_of(KeyKind::Room, &room);
                self.membership(&room, &user, false, last_of_user);
                if empty {
                    self.rooms.remove(&room);
                    self.subscription(b"UNSUBSCRIBE", key.as_bytes());
                }
            }
            MeshMsg::Publish {
                room,
                from: publisher,
                conn,
                id,
                body,
                exclude_self,
            } => {
                let exclude = if exclude_self {
                    format!("{}/{from}/{}", self.node, conn.to_user_data())
                } else {
                    String::new()
                };
                self.publish(room, Some(&publisher), ReplyTo::Conn(from, conn, id), &body, &exclude);
            }
            MeshMsg::QueryRoom { room, conn, id } => self.query_room(room, ReplyTo::Conn(from, conn, id)),
            MeshMsg::Api(request) => self.api(request),
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

    /// A command on this shard's tracking hash (what a restart of the node must undo):
    /// `verb` (`HSET`, `HDEL`, `HINCRBY`) on `entry`, with `value` if the verb takes one.
    fn track(&mut self, verb: &[u8], entry: &str, value: Option<&[u8]>) {
        let tracking = self.tracking.clone();
        let mut args: Vec<&[u8]> = vec![verb, tracking.as_bytes(), entry.as_bytes()];
        args.extend(value);
        self.cmd(Op::Ignore, &args);
    }

    /// A member connection of `user` joined (or left) `room` on this node: tracked, and
    /// counted in the room's membership in Redis. `edge`: it is the user's first (or
    /// last) member connection here, which changes the user's membership, and maybe
    /// calls for a presence event (`Op::Member`'s reply).
    fn membership(&mut self, room: &Key, user: &Key, joined: bool, edge: bool) {
        let tracked = format!("r\n{room}\n{user}");
        let step: &[u8] = if joined { b"1" } else { b"-1" };
        if !joined && edge {
            self.track(b"HDEL", &tracked, None);
        } else {
            self.track(b"HINCRBY", &tracked, Some(step));
        }
        let (users, op): (&[u8], Op) = if edge {
            let op = Op::Member {
                room: room.clone(),
                user: user.clone(),
                joined,
            };
            (step, op)
        } else {
            (b"0", Op::Ignore)
        };
        let key = key_of(KeyKind::Room, room);
        self.fcall(op, "wsg_member", &key, &[user.as_bytes(), users, step]);
    }

    /// The `wsg_read` of a join.
    fn read_join(&mut self, read: DeferredJoin) {
        let DeferredJoin { op, key, args } = read;
        let [epoch, since, ttl] = args;
        self.fcall(
            op,
            "wsg_read",
            &key,
            &[epoch.as_bytes(), since.as_bytes(), ttl.as_bytes()],
        );
    }

    fn send(&mut self, to: Key, sender: Option<Key>, reply: ReplyTo, body: &str) {
        let id = match &reply {
            ReplyTo::Conn(_, _, id) => id.clone(),
            ReplyTo::Api(_) => None,
        };
        let (head, tail) = self.split_frame(|o| protocol::encode_msg(o, 0, sender.as_deref(), id.as_ref(), body));
        let epoch = self.new_epoch().to_string();
        let key = key_of(KeyKind::User, &to);
        let user = format!("{}:{to}", to.len());
        let (hist, off, ttl) = (
            self.limits.history_max_messages.to_string(),
            self.limits.offline_max_messages.to_string(),
            self.ttl_ms(),
        );
        let sender = sender.as_deref().unwrap_or("").to_owned();
        let id_json = id.as_ref().map_or("", ClientId::as_json).to_owned();
        let cluster: &[u8] = if self.topology.slots.is_some() { b"1" } else { b"0" };
        self.fcall(
            Op::Send { to, reply },
            "wsg_send",
            &key,
            &[
                epoch.as_bytes(),
                &head,
                &tail,
                sender.as_bytes(),
                id_json.as_bytes(),
                user.as_bytes(),
                hist.as_bytes(),
                off.as_bytes(),
                ttl.as_bytes(),
                cluster,
            ],
        );
    }

    fn publish(&mut self, room: Key, publisher: Option<&str>, reply: ReplyTo, body: &str, exclude: &str) {
        let id = match &reply {
            ReplyTo::Conn(_, _, id) => id.clone(),
            ReplyTo::Api(_) => None,
        };
        let (head, tail) = self.split_frame(|o| protocol::encode_room_msg(o, &room, 0, publisher, id.as_ref(), body));
        let epoch = self.new_epoch().to_string();
        let key = key_of(KeyKind::Room, &room);
        let (hist, ttl) = (self.limits.history_max_messages.to_string(), self.ttl_ms());
        self.fcall(
            Op::Publish { room, reply },
            "wsg_publish",
            &key,
            &[
                epoch.as_bytes(),
                &head,
                &tail,
                hist.as_bytes(),
                ttl.as_bytes(),
                exclude.as_bytes(),
            ],
        );
    }

    /// The node is leaving (this shard's drain ended): everything this shard registered
    /// is taken back (its users' registry entries, its room memberships, its tracking
    /// hash) and the node leaves the live set, so its users drop out of presence at once
    /// rather than after `node_ttl`, and messages for them are queued offline instead of
    /// pushed to a node that is going away. Connections of other shards of this node
    /// that close later tell this shard nothing any more: it is done.
    pub fn leave(&mut self) {
        self.left = true;
        let ttl = self.ttl_ms();
        let field = self.field.clone();
        for (user, entry) in std::mem::take(&mut self.users) {
            if entry.registered == 0 {
                continue;
            }
            let key = key_of(KeyKind::User, &user);
            let n = entry.registered.to_string();
            self.fcall(
                Op::Ignore,
                "wsg_disconnect",
                &key,
                &[field.as_bytes(), n.as_bytes(), ttl.as_bytes()],
            );
        }
        for (room, entry) in std::mem::take(&mut self.rooms) {
            let key = key_of(KeyKind::Room, &room);
            for (user, conns) in entry.users {
                let conns = (-i64::from(conns)).to_string();
                self.fcall(
                    Op::Ignore,
                    "wsg_member",
                    &key,
                    &[user.as_bytes(), b"-1", conns.as_bytes()],
                );
            }
        }
        let (tracking, node) = (self.tracking.clone(), self.node.clone());
        self.cmd(Op::Ignore, &[b"DEL", tracking.as_bytes()]);
        self.cmd(Op::Ignore, &[b"ZREM", NODES_KEY.as_bytes(), node.as_bytes()]);
    }

    /// The backend's disconnect of `user`, for the other nodes: a `D` push on every
    /// registry entry's channel (this node skips its own: its shards closed theirs).
    pub fn disconnect_elsewhere(&mut self, user: &str) {
        let key = key_of(KeyKind::User, user);
        let mut payload = format!("D{}:{user}", user.len()).into_bytes();
        payload.extend_from_slice(self.node.as_bytes());
        self.fcall(Op::Ignore, "wsg_notify", &key, &[&payload]);
    }

    fn query_user(&mut self, user: Key, reply: ReplyTo) {
        let key = format!("{}:c", key_of(KeyKind::User, &user));
        self.cmd(Op::QueryUser { user, reply }, &[b"HGETALL", key.as_bytes()]);
    }

    fn query_room(&mut self, room: Key, reply: ReplyTo) {
        let key = key_of(KeyKind::Room, &room);
        let max = self.limits.presence_event_max_members.to_string();
        self.fcall(
            Op::QueryRoom { room, reply },
            "wsg_room_presence",
            &key,
            &[max.as_bytes()],
        );
    }

    fn api(&mut self, request: Box<ApiRequest>) {
        match request.op.clone() {
            ApiOp::Publish { room, body } => self.publish(room, None, ReplyTo::Api(request), &body, ""),
            ApiOp::Send { to, body } => self.send(to, None, ReplyTo::Api(request), &body),
            ApiOp::PresenceUser { user } => self.query_user(user, ReplyTo::Api(request)),
            ApiOp::PresenceRoom { room } => self.query_room(room, ReplyTo::Api(request)),
            ApiOp::Disconnect { .. } => unreachable!("disconnects are handled by each shard's local side"),
        }
    }

    /// The timer tick: renews the node's liveness (at most every `node_ttl / 4`, at
    /// least every second) and reads the live nodes.
    pub fn tick(&mut self, now: Instant) {
        // Member counts of large rooms whose membership changed here since the last
        // tick: one event per room per tick from this node, to every node's watchers.
        for (room, members) in std::mem::take(&mut self.counts_due) {
            self.buf.clear();
            self.buf.push(b'p');
            protocol::encode_presence_count(&mut self.buf, &room, members);
            let payload = std::mem::take(&mut self.buf);
            let key = key_of(KeyKind::Room, &room);
            self.cmd(Op::Ignore, &[b"PUBLISH", key.as_bytes(), &payload]);
            self.buf = payload;
        }
        let every = (self.node_ttl / 4).min(Duration::from_secs(1));
        if self
            .last_alive
            .is_some_and(|t| now.saturating_duration_since(t) < every)
        {
            return;
        }
        self.last_alive = Some(now);
        let ttl = self.node_ttl.as_millis().to_string();
        let node = self.node.clone();
        self.fcall(Op::Alive, "wsg_alive", NODES_KEY, &[node.as_bytes(), ttl.as_bytes()]);
    }

    /// The commands produced since the last call: one batch per connection that has
    /// any, each with its id and connection index. `generations[i]` is connection `i`'s
    /// `RedisStats::connects`: when it moved, that Redis may have restarted (or this is
    /// its first connection), so its batch starts with what a fresh connection needs:
    /// the functions and this node's registry entries on it, and on the first
    /// connection the subscriptions; the very first set-up also removes what a previous
    /// life of this node left.
    pub fn take_batches(&mut self, generations: &[u64]) -> Vec<(u64, usize, Batch)> {
        for (conn, &generation) in generations.iter().enumerate().take(self.pending.len()) {
            if generation != self.generations[conn] && generation > 0 {
                self.generations[conn] = generation;
                self.set_up(conn);
            }
        }
        let mut out = Vec::new();
        for conn in 0..self.pending.len() {
            if self.pending[conn].0.is_empty() {
                continue;
            }
            let (batch, ops) = std::mem::take(&mut self.pending[conn]);
            let id = self.next_batch;
            self.next_batch += 1;
            self.inflight.insert(id, ops);
            out.push((id, conn, batch));
        }
        out
    }

    /// Puts the set-up of connection `conn` before what its batch holds.
    fn set_up(&mut self, conn: usize) {
        let turn = std::mem::take(&mut self.pending[conn]);
        self.cmd_on(
            conn,
            Op::Setup { conn },
            &[b"FUNCTION", b"LOAD", b"REPLACE", FUNCTIONS.as_bytes()],
        );
        if !self.cleaned_up && self.topology.route(self.tracking.as_bytes()) == conn {
            let tracking = self.tracking.clone();
            self.cmd_on(conn, Op::Cleanup, &[b"HGETALL", tracking.as_bytes()]);
        }
        if conn == 0 {
            let channel = self.channel.clone();
            self.subscription(b"SUBSCRIBE", channel.as_bytes());
            let rooms: Vec<String> = self.rooms.keys().map(|r| key_of(KeyKind::Room, r)).collect();
            for room in rooms {
                self.subscription(b"SUBSCRIBE", room.as_bytes());
            }
        }
        let users: Vec<(String, u32)> = self
            .users
            .iter()
            .map(|(u, e)| (key_of(KeyKind::User, u), e.connections()))
            .filter(|(key, _)| self.topology.route(key.as_bytes()) == conn)
            .collect();
        for (key, n) in users {
            let (field, n) = (self.field.clone(), n.to_string());
            self.cmd_on(
                conn,
                Op::Ignore,
                &[
                    b"FCALL",
                    b"wsg_register",
                    b"1",
                    key.as_bytes(),
                    field.as_bytes(),
                    n.as_bytes(),
                ],
            );
        }
        let topology = &self.topology;
        for (user, entry) in &mut self.users {
            if topology.route(key_of(KeyKind::User, user).as_bytes()) == conn {
                entry.registered = entry.connections();
            }
        }
        // Then what this turn asked for, in order.
        let (batch, mut ops) = turn;
        self.pending[conn].0.append(batch);
        self.pending[conn].1.append(&mut ops);
    }

    /// The replies of batch `id` (or why there are none).
    pub fn on_replies(
        &mut self,
        id: u64,
        replies: Result<Vec<Value>, Failed>,
        out: &mut Vec<(ShardId, MeshMsg)>,
        m: &mut MsgMetrics,
    ) {
        let Some(ops) = self.inflight.remove(&id) else {
            return;
        };
        match replies {
            Ok(values) => {
                debug_assert_eq!(values.len(), ops.len());
                let mut values = values.into_iter();
                for op in ops {
                    let value = values.next().unwrap_or(Value::Null);
                    if let Value::Error(e) = &value {
                        self.stats.error_replies += 1;
                        if matches!(op, Op::Setup { .. }) {
                            // Not redone: it would fail the same way every turn.
                            tracing::error!(
                                shard = self.shard,
                                error = %String::from_utf8_lossy(e),
                                "redis: loading the gateway's functions failed (Redis 7 or later is needed); \
                                 every request will be answered unavailable"
                            );
                            continue;
                        }
                        if e.starts_with(b"MOVED") || e.starts_with(b"ASK") {
                            tracing::warn!(
                                shard = self.shard,
                                error = %String::from_utf8_lossy(e),
                                "redis: the cluster layout changed since start; restart the gateway to \
                                 learn it (live re-discovery is not built)"
                            );
                        } else {
                            tracing::warn!(
                                shard = self.shard,
                                error = %String::from_utf8_lossy(e),
                                "redis: error reply"
                            );
                        }
                        self.fail(op, out, m);
                    } else {
                        self.reply(op, value, out, m);
                    }
                }
            }
            Err(_) => {
                for op in ops {
                    self.fail(op, out, m);
                }
            }
        }
    }

    /// The answer to a sequenced send: an `ack` to a connection, or the API's reply.
    fn answer_send(&mut self, to: Key, pos: Position, online: bool, reply: ReplyTo, out: &mut Vec<(ShardId, MeshMsg)>) {
        match reply {
            ReplyTo::Conn(from, conn, id) => {
                let frame = self.frame(|o| protocol::encode_ack(o, id.as_ref(), AckOf::Inbox { to: &to }, pos));
                out.push((from, MeshMsg::ToConn { conn, frame }));
            }
            ReplyTo::Api(request) => request.answer(ApiReply::Sent {
                to,
                epoch: pos.epoch,
                seq: pos.seq,
                online,
            }),
        }
    }

    /// A request whose command had no answer.
    fn fail(&mut self, op: Op, out: &mut Vec<(ShardId, MeshMsg)>, m: &mut MsgMetrics) {
        let unavailable = |this: &mut Self, reply: ReplyTo, out: &mut Vec<(ShardId, MeshMsg)>, m: &mut MsgMetrics| {
            this.stats.unavailable += 1;
            match reply {
                ReplyTo::Conn(from, conn, id) => {
                    let frame = this.error(ErrorCode::Unavailable, UNAVAILABLE, id.as_ref(), m);
                    out.push((from, MeshMsg::ToConn { conn, frame }));
                }
                ReplyTo::Api(request) => request.answer(ApiReply::Unavailable),
            }
        };
        match op {
            Op::Ignore | Op::Alive | Op::Receipt | Op::Requeue { ack: None } | Op::Member { .. } | Op::Cleanup => {}
            // The message is sequenced and in the history (what an ack promises); only
            // the welcome's copy is missing, and the client sees the gap and resumes.
            Op::Requeue { ack: Some(ack) } => {
                let (to, pos, reply) = *ack;
                self.answer_send(to, pos, false, reply, out);
            }
            Op::Setup { conn } => self.generations[conn] = 0,
            Op::Subscribed { room } => {
                for read in self.deferred_joins.remove(&room).unwrap_or_default() {
                    self.fail(read.op, out, m);
                }
            }
            Op::Connect {
                from,
                conn,
                user,
                generation,
            } => {
                let route = self.topology.route(key_of(KeyKind::User, &user).as_bytes());
                if generation == self.generations[route]
                    && let Some(entry) = self.users.get_mut(&user)
                {
                    entry.registered = entry.registered.saturating_sub(1);
                }
                // No welcome without a position: the client is told to come back
                // (1013), which a load balancer may send to a node that reaches Redis.
                self.stats.unavailable += 1;
                let _ = m;
                out.push((
                    from,
                    MeshMsg::Refused {
                        conn,
                        reason: "redis unavailable",
                    },
                ));
                self.connected(&user, from, conn, u64::MAX, out);
            }
            Op::Send { reply, .. } | Op::Publish { reply, .. } => unavailable(self, reply, out, m),
            Op::QueryUser { reply, .. } | Op::QueryRoom { reply, .. } => unavailable(self, reply, out, m),
            Op::Ack { from, conn, id, .. } => {
                unavailable(self, ReplyTo::Conn(from, conn, id), out, m);
            }
            Op::Resume { from, conn, id, .. } => {
                self.stats.unavailable += 1;
                let frame = self.error(ErrorCode::Unavailable, UNAVAILABLE, id.as_ref(), m);
                out.push((
                    from,
                    MeshMsg::Resumed {
                        conn,
                        frames: vec![frame],
                    },
                ));
            }
            Op::Join {
                from,
                conn,
                room,
                id,
                ticket,
                ..
            } => {
                // The local side counts the connection as a member (it may `leave`); the
                // client learns the join did not reach the fleet.
                self.stats.unavailable += 1;
                let frame = self.error(ErrorCode::Unavailable, UNAVAILABLE, id.as_ref(), m);
                out.push((
                    from,
                    MeshMsg::Joined {
                        conn,
                        room,
                        ticket,
                        frames: vec![frame],
                    },
                ));
            }
        }
    }

    #[allow(clippy::too_many_lines)]
    fn reply(&mut self, op: Op, value: Value, out: &mut Vec<(ShardId, MeshMsg)>, m: &mut MsgMetrics) {
        let items = value.as_items().unwrap_or(&[]);
        match op {
            Op::Ignore | Op::Requeue { ack: None } | Op::Setup { .. } => {}
            Op::Requeue { ack: Some(ack) } => {
                let (to, pos, reply) = *ack;
                self.answer_send(to, pos, false, reply, out);
            }
            Op::Subscribed { room } => {
                for read in self.deferred_joins.remove(&room).unwrap_or_default() {
                    self.read_join(read);
                }
            }
            Op::Alive => {
                let mut live: Vec<Box<str>> = items.iter().filter_map(text).map(Into::into).collect();
                if !live.iter().any(|n| **n == *self.node) {
                    live.push(self.node.as_ref().into());
                }
                live.sort_unstable();
                self.live_arg = live.join("\n");
                self.live = live;
            }
            Op::Cleanup => {
                self.cleaned_up = true;
                self.clean_previous_life(&value);
            }
            Op::Connect {
                from,
                conn,
                user,
                generation,
            } => {
                let (Some(epoch), Some(seq), Some(now_ms)) = (int(items.first()), int(items.get(1)), int(items.get(2)))
                else {
                    let op = Op::Connect {
                        from,
                        conn,
                        user,
                        generation,
                    };
                    return self.fail(op, out, m);
                };
                let pos = Position {
                    epoch: epoch as u64,
                    seq: seq as u64,
                };
                let limits = self.limits.clone();
                let mut frames = vec![self.frame(|o| protocol::encode_welcome(o, Encoding::Json, &user, pos, &limits))];
                let oldest = (now_ms as u64).saturating_sub(limits.offline_max_age.as_millis() as u64);
                for e in &items[3..] {
                    match e.as_bytes().and_then(entry) {
                        Some((at, frame)) if at >= oldest => {
                            m.offline_delivered += 1;
                            frames.push(SharedFrame::text(frame));
                        }
                        _ => m.offline_expired += 1,
                    }
                }
                out.push((from, MeshMsg::Welcome { conn, frames }));
                self.connected(&user, from, conn, pos.seq, out);
            }
            Op::Send { to, reply } => {
                let (Some(epoch), Some(seq), Some(receivers)) =
                    (int(items.first()), int(items.get(1)), int(items.get(2)))
                else {
                    return self.fail(Op::Send { to, reply }, out, m);
                };
                let pos = Position {
                    epoch: epoch as u64,
                    seq: seq as u64,
                };
                m.sends_accepted += 1;
                let queued = int(items.get(3)) == Some(1);
                if queued {
                    m.offline_queued += 1;
                }
                // On a Redis Cluster, receivers count one master's subscribers only:
                // who is online is the registry's live entries.
                let entries: Vec<&str> = items.iter().skip(6).filter_map(text).collect();
                let alive = |e: &&str| {
                    let node = e.rsplit_once('/').map_or(*e, |(n, _)| n);
                    self.live.iter().any(|l| **l == *node)
                };
                let online = if self.topology.slots.is_some() {
                    entries.iter().any(alive)
                } else {
                    receivers > 0
                };
                if !queued && !online {
                    // Only dead nodes' entries: nobody got it; queue it from the history.
                    let dead: Vec<Vec<u8>> = entries.iter().map(|e| e.as_bytes().to_vec()).collect();
                    let key = key_of(KeyKind::User, &to);
                    let (seq_arg, off, ttl) = (
                        pos.seq.to_string(),
                        self.limits.offline_max_messages.to_string(),
                        self.ttl_ms(),
                    );
                    let mut args: Vec<&[u8]> = vec![seq_arg.as_bytes(), off.as_bytes(), ttl.as_bytes()];
                    args.extend(dead.iter().map(Vec::as_slice));
                    m.offline_queued += 1;
                    m.history_trimmed += int(items.get(4)).unwrap_or(0) as u64;
                    m.offline_dropped += int(items.get(5)).unwrap_or(0) as u64;
                    // The ack waits for the queue entry (one more round trip, only
                    // after a node died with this user connected).
                    let ack = Some(Box::new((to, pos, reply)));
                    self.fcall(Op::Requeue { ack }, "wsg_offline_seq", &key, &args);
                    return;
                }
                m.history_trimmed += int(items.get(4)).unwrap_or(0) as u64;
                m.offline_dropped += int(items.get(5)).unwrap_or(0) as u64;
                self.answer_send(to, pos, online, reply, out);
            }
            Op::Ack {
                from,
                conn,
                user,
                seq,
                id,
            } => match int(items.first()) {
                Some(0) => {
                    m.receipts_unknown += 1;
                    let frame = self.error(ErrorCode::UnknownSeq, "seq is not in the inbox history", id.as_ref(), m);
                    out.push((from, MeshMsg::ToConn { conn, frame }));
                }
                Some(2) => {
                    let Some(sender) = items.get(1).and_then(text) else {
                        return;
                    };
                    let (to, id_json) = sender.split_once('\n').unwrap_or((sender, ""));
                    let to: Key = to.into();
                    let id = (!id_json.is_empty()).then(|| ClientId::from_json_text(id_json));
                    let owner = owner_of(KeyKind::User, &to, self.shards);
                    out.push((owner, MeshMsg::Receipt { to, by: user, seq, id }));
                }
                _ => {}
            },
            Op::Receipt => match value.as_integer() {
                Some(n) if n > 0 => m.receipts += 1,
                _ => m.receipts_undeliverable += 1,
            },
            Op::Resume { from, conn, id, since } => {
                let Some(pos) = self.position(items) else {
                    return self.fail(Op::Resume { from, conn, id, since }, out, m);
                };
                let frames = match self.replayed(items, since) {
                    Ok(mut frames) => {
                        m.replays += 1;
                        let n = frames.len() as u64;
                        frames.push(self.frame(|o| protocol::encode_resumed(o, id.as_ref(), pos, n)));
                        frames
                    }
                    Err(reason) => {
                        m.resyncs += 1;
                        vec![self.frame(|o| protocol::encode_resync(o, None, pos, reason))]
                    }
                };
                out.push((from, MeshMsg::Resumed { conn, frames }));
            }
            Op::Join {
                from,
                conn,
                room,
                id,
                since,
                ticket,
            } => {
                let Some(pos) = self.position(items) else {
                    let op = Op::Join {
                        from,
                        conn,
                        room,
                        id,
                        since,
                        ticket,
                    };
                    return self.fail(op, out, m);
                };
                let (mut frames, replayed) = match since {
                    None => (Vec::new(), 0),
                    Some(since) => match self.replayed(items, since) {
                        Ok(frames) => {
                            m.replays += 1;
                            let n = frames.len() as u64;
                            (frames, n)
                        }
                        Err(reason) => {
                            m.resyncs += 1;
                            (
                                vec![self.frame(|o| protocol::encode_resync(o, Some(&room), pos, reason))],
                                0,
                            )
                        }
                    },
                };
                frames.push(self.frame(|o| protocol::encode_joined(o, id.as_ref(), &room, pos, replayed)));
                out.push((
                    from,
                    MeshMsg::Joined {
                        conn,
                        room,
                        ticket,
                        frames,
                    },
                ));
            }
            Op::Member { room, user, joined } => {
                let (Some(nodes), Some(members)) = (int(items.first()), int(items.get(1))) else {
                    return;
                };
                // A user's first membership anywhere, or their last one gone: an event
                // for the watchers of a small room, on every node with members.
                let changed = if joined { nodes == 1 } else { nodes == 0 };
                if changed && members as usize > self.limits.presence_event_max_members {
                    // A large room: a member count at the next tick instead.
                    match self.counts_due.iter_mut().find(|(r, _)| *r == room) {
                        Some(due) => due.1 = members as u64,
                        None => self.counts_due.push((room.clone(), members as u64)),
                    }
                }
                if changed && members as usize <= self.limits.presence_event_max_members {
                    self.buf.clear();
                    self.buf.push(b'p');
                    protocol::encode_presence_event(&mut self.buf, &room, joined, &user, members as u64);
                    let payload = std::mem::take(&mut self.buf);
                    let key = key_of(KeyKind::Room, &room);
                    self.cmd(Op::Ignore, &[b"PUBLISH", key.as_bytes(), &payload]);
                    self.buf = payload;
                }
            }
            Op::Publish { room, reply } => {
                let (Some(epoch), Some(seq)) = (int(items.first()), int(items.get(1))) else {
                    return self.fail(Op::Publish { room, reply }, out, m);
                };
                let pos = Position {
                    epoch: epoch as u64,
                    seq: seq as u64,
                };
                m.publishes_accepted += 1;
                m.history_trimmed += int(items.get(3)).unwrap_or(0) as u64;
                match reply {
                    ReplyTo::Conn(from, conn, id) => {
                        let frame =
                            self.frame(|o| protocol::encode_ack(o, id.as_ref(), AckOf::Room { room: &room }, pos));
                        out.push((from, MeshMsg::ToConn { conn, frame }));
                    }
                    ReplyTo::Api(request) => request.answer(ApiReply::Published {
                        room,
                        epoch: pos.epoch,
                        seq: pos.seq,
                    }),
                }
            }
            Op::QueryUser { user, reply } => {
                let mut connections = 0u64;
                let pairs: Vec<(&Value, &Value)> = match &value {
                    Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
                    Value::Array(flat) => flat.chunks(2).filter_map(|c| Some((c.first()?, c.get(1)?))).collect(),
                    _ => Vec::new(),
                };
                for (field, count) in pairs {
                    let Some(field) = text(field) else { continue };
                    let node = field.rsplit_once('/').map_or(field, |(n, _)| n);
                    if self.live.iter().any(|l| **l == *node) {
                        connections += int(Some(count)).unwrap_or(0).max(0) as u64;
                    }
                }
                match reply {
                    ReplyTo::Conn(from, conn, id) => {
                        let frame = self.frame(|o| protocol::encode_presence_user(o, id.as_ref(), &user, connections));
                        out.push((from, MeshMsg::ToConn { conn, frame }));
                    }
                    ReplyTo::Api(request) => request.answer(ApiReply::PresenceUser { user, connections }),
                }
            }
            Op::QueryRoom { room, reply } => {
                let members = int(items.first()).unwrap_or(0).max(0) as u64;
                let connections = int(items.get(1)).unwrap_or(0).max(0) as u64;
                let listed = int(items.get(2)) == Some(1);
                let mut users: Vec<Key> = items.iter().skip(3).filter_map(text).map(Into::into).collect();
                users.sort_unstable();
                match reply {
                    ReplyTo::Conn(from, conn, id) => {
                        self.buf.clear();
                        let list = listed.then(|| users.iter().map(|u| &**u));
                        protocol::encode_presence_room(&mut self.buf, id.as_ref(), &room, members, connections, list);
                        let frame = SharedFrame::text(std::str::from_utf8(&self.buf).expect("UTF-8"));
                        out.push((from, MeshMsg::ToConn { conn, frame }));
                    }
                    ReplyTo::Api(request) => request.answer(ApiReply::PresenceRoom {
                        room,
                        members,
                        connections,
                        users: listed.then_some(users),
                    }),
                }
            }
        }
    }

    /// The position in a `wsg_read` reply.
    fn position(&self, items: &[Value]) -> Option<Position> {
        Some(Position {
            epoch: int(items.first())? as u64,
            seq: int(items.get(1))? as u64,
        })
    }

    /// The replay a `wsg_read` reply holds for a client at `since`, or why there is
    /// none (the same verdicts as the single-box owner's).
    fn replayed(&self, items: &[Value], since: Position) -> Result<Vec<SharedFrame>, ResyncReason> {
        let pos = self.position(items).unwrap_or_default();
        if !since.replay_from(pos)? {
            return Ok(Vec::new());
        }
        let first = int(items.get(2)).unwrap_or(0) as u64;
        let now_ms = int(items.get(3)).unwrap_or(0) as u64;
        let oldest = now_ms.saturating_sub(self.limits.history_max_age.as_millis() as u64);
        let frames: Vec<SharedFrame> = items[4.min(items.len())..]
            .iter()
            .filter_map(|e| e.as_bytes().and_then(entry))
            .filter(|(at, _)| *at >= oldest)
            .map(|(_, f)| SharedFrame::text(f))
            .collect();
        if first == since.seq + 1 && frames.len() as u64 == pos.seq - since.seq {
            Ok(frames)
        } else {
            Err(ResyncReason::TooOld)
        }
    }

    /// Undoes what a previous life of this node (same id and shard) wrote and did not
    /// take back: it was killed, or Redis was away when it drained.
    fn clean_previous_life(&mut self, value: &Value) {
        let pairs: Vec<(&Value, &Value)> = match value {
            Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
            Value::Array(flat) => flat.chunks(2).filter_map(|c| Some((c.first()?, c.get(1)?))).collect(),
            _ => Vec::new(),
        };
        for (what, count) in pairs {
            let Some(what) = text(what) else { continue };
            let count = int(Some(count)).unwrap_or(0);
            let mut parts = what.splitn(3, '\n');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("u"), Some(user), None) => {
                    if self.users.contains_key(user) {
                        continue;
                    }
                    let key = key_of(KeyKind::User, user);
                    let field = self.field.clone();
                    self.cmd(Op::Ignore, &[b"HDEL", format!("{key}:c").as_bytes(), field.as_bytes()]);
                    self.stats.cleaned += 1;
                }
                (Some("r"), Some(room), Some(user)) => {
                    if self.rooms.get(room).is_some_and(|r| r.users.contains_key(user)) {
                        continue;
                    }
                    let key = key_of(KeyKind::Room, room);
                    let conns = (-count).to_string();
                    self.fcall(
                        Op::Ignore,
                        "wsg_member",
                        &key,
                        &[user.as_bytes(), b"-1", conns.as_bytes()],
                    );
                    self.stats.cleaned += 1;
                }
                _ => {}
            }
        }
        // What this life has written so far stays tracked; the rest goes.
        let mut keep: Vec<(String, String)> = Vec::new();
        for user in self.users.keys() {
            keep.push((format!("u\n{user}"), "1".to_owned()));
        }
        for (room, entry) in &self.rooms {
            for (user, n) in &entry.users {
                keep.push((format!("r\n{room}\n{user}"), n.to_string()));
            }
        }
        let tracking = self.tracking.clone();
        self.cmd(Op::Ignore, &[b"DEL", tracking.as_bytes()]);
        for (k, v) in keep {
            self.cmd(Op::Ignore, &[b"HSET", tracking.as_bytes(), k.as_bytes(), v.as_bytes()]);
        }
    }

    /// A connect of `user` was answered (welcome at `seq`, or refused: `u64::MAX`):
    /// messages pushed while it waited and sequenced after the welcome go to the new
    /// connection, after its welcome.
    fn connected(&mut self, user: &str, from: ShardId, conn: ConnId, seq: u64, out: &mut Vec<(ShardId, MeshMsg)>) {
        let Some(entry) = self.users.get_mut(user) else { return };
        entry.connecting = entry.connecting.saturating_sub(1);
        for (s, frame) in entry.early.iter().flat_map(|e| e.iter()) {
            if *s > seq {
                out.push((
                    from,
                    MeshMsg::ToConn {
                        conn,
                        frame: frame.clone(),
                    },
                ));
            }
        }
        if entry.connecting == 0 {
            entry.early = None;
        }
    }

    /// A pub/sub message (RESP3 push) from this shard's connection: an inbox message or
    /// receipt for a user of this node, or a room's message or presence event.
    pub fn on_push(&mut self, push: &Value, out: &mut Vec<(ShardId, MeshMsg)>, m: &mut MsgMetrics) {
        let Some(items) = push.as_items() else { return };
        let (Some(kind), Some(channel), Some(payload)) = (
            items.first().and_then(Value::as_bytes),
            items.get(1).and_then(Value::as_bytes),
            items.get(2).and_then(Value::as_bytes),
        ) else {
            return;
        };
        if kind != b"message" || payload.is_empty() {
            // Subscribe confirmations and the like.
            return;
        }
        self.stats.pushes += 1;
        let (tag, rest) = (payload[0], &payload[1..]);
        if channel == self.channel.as_bytes() {
            let Some((user, rest)) = length_prefixed(rest) else {
                return;
            };
            if tag == b'D' {
                // The backend disconnected the user on another node: close ours.
                if rest != self.node.as_bytes()
                    && let Some(entry) = self.users.get(user)
                {
                    let user: Key = user.into();
                    for shard in entry.shards.shards() {
                        out.push((shard, MeshMsg::DisconnectUser { user: user.clone() }));
                    }
                }
                return;
            }
            let frame_bytes = if tag == b'u' {
                match entry(rest) {
                    Some((_, frame)) => frame,
                    None => return,
                }
            } else {
                match std::str::from_utf8(rest) {
                    Ok(frame) => frame,
                    Err(_) => return,
                }
            };
            let shards: Vec<ShardId> = self
                .users
                .get(user)
                .map_or_else(Vec::new, |e| e.shards.shards().collect());
            if shards.is_empty() {
                if tag == b'u' {
                    // The user left this node after the send found them here.
                    self.stats.requeued += 1;
                    let key = key_of(KeyKind::User, user);
                    let (off, ttl) = (self.limits.offline_max_messages.to_string(), self.ttl_ms());
                    self.fcall(
                        Op::Requeue { ack: None },
                        "wsg_requeue",
                        &key,
                        &[rest, off.as_bytes(), ttl.as_bytes()],
                    );
                }
                return;
            }
            let frame = SharedFrame::text(frame_bytes);
            if tag == b'u'
                && self.topology.slots.is_some()
                && let Some(entry) = self.users.get_mut(user)
                && entry.connecting > 0
            {
                // Bounded like an offline queue: past it the oldest goes (counted); the
                // client sees the gap in `seq` and resumes.
                let early = entry.early.get_or_insert_default();
                if early.len() >= self.limits.offline_max_messages {
                    early.remove(0);
                    self.stats.early_dropped += 1;
                }
                early.push((seq_of(frame_bytes), frame.clone()));
            }
            let user: Key = user.into();
            for shard in shards {
                out.push((
                    shard,
                    MeshMsg::ToUser {
                        user: user.clone(),
                        frame: frame.clone(),
                    },
                ));
            }
            return;
        }
        let Some(room) = room_of_channel(channel) else { return };
        let Some(entry) = self.rooms.get(room) else { return };
        let (exclude, frame, watchers_only) = match tag {
            b'r' => {
                let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                    return;
                };
                let Ok(frame) = std::str::from_utf8(&rest[nl + 1..]) else {
                    return;
                };
                (Self::excluded(&self.node, &rest[..nl]), frame, false)
            }
            b'p' => {
                let Ok(frame) = std::str::from_utf8(rest) else { return };
                m.presence_events += 1;
                (None, frame, true)
            }
            _ => return,
        };
        let frame = SharedFrame::text(frame);
        let room: Key = room.into();
        for &(shard, _, watchers) in &entry.shards {
            if watchers_only && watchers == 0 {
                continue;
            }
            out.push((
                shard,
                MeshMsg::ToRoom {
                    room: room.clone(),
                    frame: frame.clone(),
                    exclude: exclude.and_then(|(s, conn)| (s == shard).then_some(conn)),
                    watchers_only,
                },
            ));
        }
    }

    /// The connection a publish excludes, if it is on this node: `<node>/<shard>/<conn>`.
    fn excluded(node: &str, token: &[u8]) -> Option<(ShardId, ConnId)> {
        let token = std::str::from_utf8(token).ok()?;
        let (rest, conn) = token.rsplit_once('/')?;
        let (n, shard) = rest.rsplit_once('/')?;
        if n != node {
            return None;
        }
        Some((shard.parse().ok()?, ConnId::from_user_data(conn.parse().ok()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked() {
        assert!(check_node_id("gw-1.eu:8080").is_ok());
        for bad in ["", "a b", "a/b", "a\nb", &"x".repeat(65)] {
            assert!(check_node_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn push_payload_parts() {
        assert_eq!(entry(b"123 {\"a\":1}"), Some((123, "{\"a\":1}")));
        assert_eq!(entry(b"x {}"), None);
        assert_eq!(seq_of(r#"{"type":"msg","seq":42,"body":{"seq":1}}"#), 42);
        assert_eq!(seq_of("{}"), 0);
        assert_eq!(length_prefixed(b"5:alice1 {}"), Some(("alice", b"1 {}".as_slice())));
        assert_eq!(length_prefixed(b"9:alice"), None);
        assert_eq!(room_of_channel(b"wsg:{r:lobby}"), Some("lobby"));
        assert_eq!(room_of_channel(b"wsg:n:x/0"), None);
        let conn = ConnId::new(7, 3);
        let token = format!("n1/2/{}", conn.to_user_data());
        assert_eq!(ClusterOwner::excluded("n1", token.as_bytes()), Some((2, conn)));
        assert_eq!(ClusterOwner::excluded("n2", token.as_bytes()), None);
    }

    #[test]
    fn a_frame_splits_around_its_seq() {
        let cfg = ClusterConfig {
            node: "n".into(),
            node_ttl: Duration::from_secs(10),
            topology: Topology::single("127.0.0.1:6379".parse().unwrap()),
        };
        let mut owner = ClusterOwner::new(0, 1, &MsgLimits::default(), &cfg, 1);
        // A body and a sender that spell "seq":0 inside strings must not move the split.
        let id = ClientId::from_json_text("\"\\\"seq\\\":0\"");
        let (head, tail) =
            owner.split_frame(|o| protocol::encode_msg(o, 0, Some("\"seq\":0"), Some(&id), "{\"seq\":0}"));
        let whole = format!("{}42{}", String::from_utf8_lossy(&head), String::from_utf8_lossy(&tail));
        let v: serde_json::Value = serde_json::from_str(&whole).expect("JSON");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["body"]["seq"], 0);
        let (head, tail) = owner.split_frame(|o| protocol::encode_room_msg(o, "r\"seq\":0", 0, None, None, "1"));
        let whole = format!("{}7{}", String::from_utf8_lossy(&head), String::from_utf8_lossy(&tail));
        let v: serde_json::Value = serde_json::from_str(&whole).expect("JSON");
        assert_eq!((v["seq"].as_u64(), v["room"].as_str()), (Some(7), Some("r\"seq\":0")));
    }
}
