//! The backend API's messages to the shards: an [`ApiRequest`] (what an application
//! backend asked for over HTTP, see `crate::admin`) carries a reply channel, and the
//! shard that handles it ([`MsgShard::handle_api`](super::core::MsgShard::handle_api))
//! answers on that channel with an [`ApiReply`].
//!
//! # Shared nothing
//!
//! The admin thread never touches shard state. It validates the request, picks a shard
//! (the key's owner, so usually no mesh hop follows) and hands the request to it through
//! an [`ApiSink`] (the server's sink pushes `Command::Api` into the shard's inbox and
//! rings its doorbell). The shard routes it like a client message: to the owner of the
//! room or user, over the mesh when that is another shard ([`MeshMsg::Api`]); the owner
//! answers on the channel directly, which is the one thing that crosses threads
//! without a ring. `Disconnect` is delivered by the admin thread to every shard, and
//! each answers with the connections it closed.
//!
//! The channel is a `std::sync::mpsc::sync_channel` sized for every answer expected
//! (1, or one per shard for `Disconnect`), and shards answer with `try_send`, so a
//! shard never blocks on it; if the admin side gave up waiting (timeout) the answer is
//! dropped.
//!
//! [`MeshMsg::Api`]: super::mesh::MeshMsg::Api
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, OnceLock};

use super::{Key, ShardId};
use crate::proto::close::CloseCode;

/// The close code of connections closed by `POST /api/disconnect`: 4000, the first of
/// the application range (RFC 6455 §7.4.2), meaning "disconnected by the application
/// backend". Not 1008: nothing the client sent violated a policy, and a client can
/// tell this code apart and, for instance, not reconnect at once.
pub const API_DISCONNECT_CLOSE: CloseCode = CloseCode(4000);
/// The close reason sent with [`API_DISCONNECT_CLOSE`].
pub const API_DISCONNECT_REASON: &str = "disconnected by the backend";

/// What a backend asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiOp {
    /// Publish `body` (JSON text) to `room`, from the server (`"from": null`).
    Publish {
        /// The room.
        room: Key,
        /// The body's JSON text.
        body: Box<str>,
    },
    /// Put `body` (JSON text) in `to`'s inbox, from the server (`"from": null`).
    Send {
        /// The recipient.
        to: Key,
        /// The body's JSON text.
        body: Box<str>,
    },
    /// Whether `user` is online, on how many connections.
    PresenceUser {
        /// The user.
        user: Key,
    },
    /// Members and connections of `room`, with the member list for small rooms.
    PresenceRoom {
        /// The room.
        room: Key,
    },
    /// Close every connection of `user` on the shard that gets this.
    Disconnect {
        /// The user.
        user: Key,
    },
}

/// A request with the channel its answer goes to.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    /// What to do.
    pub op: ApiOp,
    /// Where the answer goes (see the module docs).
    pub reply: SyncSender<ApiReply>,
}

impl ApiRequest {
    /// Answers, never blocking; an answer nobody waits for any more is dropped.
    pub fn answer(&self, reply: ApiReply) {
        let _ = self.reply.try_send(reply);
    }
}

/// A shard's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiReply {
    /// The room's owner accepted the publish at `seq` of `epoch`.
    Published {
        /// The room.
        room: Key,
        /// The room's epoch.
        epoch: u64,
        /// The message's sequence number in the room.
        seq: u64,
    },
    /// The user's owner accepted the message at `seq` of `epoch` of the inbox.
    Sent {
        /// The recipient.
        to: Key,
        /// The inbox epoch.
        epoch: u64,
        /// The message's sequence number in the inbox.
        seq: u64,
        /// Delivered to connections (`true`) or queued offline (`false`).
        online: bool,
    },
    /// Presence of a user.
    PresenceUser {
        /// The user.
        user: Key,
        /// Open connections (0: offline).
        connections: u64,
    },
    /// Presence of a room.
    PresenceRoom {
        /// The room.
        room: Key,
        /// Distinct member users.
        members: u64,
        /// Member connections.
        connections: u64,
        /// The members, when at most `presence_event_max_members`.
        users: Option<Vec<Key>>,
    },
    /// One shard closed `closed` connections of the user.
    Disconnected {
        /// The shard.
        shard: ShardId,
        /// Connections it closed.
        closed: u64,
    },
    /// The mesh shed the request (a full ring): retry later.
    Overloaded,
    /// The message store's disk budget (`data_max_bytes`) is spent: nothing was stored.
    StorageFull,
    /// With `--redis`: Redis did not answer; nothing was stored. Retry later.
    Unavailable,
}

impl ApiReply {
    /// The JSON the HTTP API answers with (not for `Disconnected`, `Overloaded` and `StorageFull`,
    /// which the admin side turns into its own answers).
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(96);
        let s = |out: &mut String, v: &str| {
            out.push_str(&serde_json::to_string(v).expect("strings serialise"));
        };
        match self {
            Self::Published { room, epoch, seq } => {
                out.push_str("{\"room\":");
                s(&mut out, room);
                let _ = write!(out, ",\"epoch\":{epoch},\"seq\":{seq}}}");
            }
            Self::Sent { to, epoch, seq, online } => {
                out.push_str("{\"to\":");
                s(&mut out, to);
                let _ = write!(out, ",\"epoch\":{epoch},\"seq\":{seq},\"online\":{online}}}");
            }
            Self::PresenceUser { user, connections } => {
                out.push_str("{\"user\":");
                s(&mut out, user);
                let _ = write!(out, ",\"online\":{},\"connections\":{connections}}}", *connections > 0);
            }
            Self::PresenceRoom {
                room,
                members,
                connections,
                users,
            } => {
                out.push_str("{\"room\":");
                s(&mut out, room);
                let _ = write!(out, ",\"members\":{members},\"connections\":{connections}");
                if let Some(users) = users {
                    out.push_str(",\"users\":[");
                    for (i, u) in users.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        s(&mut out, u);
                    }
                    out.push(']');
                }
                out.push('}');
            }
            Self::Disconnected { shard, closed } => {
                let _ = write!(out, "{{\"shard\":{shard},\"closed\":{closed}}}");
            }
            Self::Overloaded => out.push_str("{\"error\":\"overloaded\"}"),
            Self::StorageFull => out.push_str("{\"error\":\"storage_full\"}"),
            Self::Unavailable => out.push_str("{\"error\":\"unavailable\"}"),
        }
        out
    }
}

/// Why a request could not be handed to a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkError {
    /// The shards are not running (yet, or any more), or messaging is off (`echo`).
    Unavailable,
}

/// How the admin thread hands a request to a shard. The server implements it with
/// `ShardHandle::send(Command::Api(request))`; tests with shards of their own.
pub trait ApiSink: Send + Sync + std::fmt::Debug {
    /// Shards running (the modulus of `owner_of`).
    fn shards(&self) -> usize;
    /// Queues `request` on shard `shard` and wakes it.
    fn deliver(&self, shard: ShardId, request: ApiRequest) -> Result<(), SinkError>;
}

/// A sink filled in later: the admin listener starts before the shards, so `main`
/// gives it this slot and sets the shards' sink once they run. Until then every
/// request is [`SinkError::Unavailable`] (503).
#[derive(Debug, Default)]
pub struct ApiSinkSlot(OnceLock<Arc<dyn ApiSink>>);

impl ApiSinkSlot {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fills the slot; a second call is ignored.
    pub fn set(&self, sink: Arc<dyn ApiSink>) {
        let _ = self.0.set(sink);
    }
}

impl ApiSink for ApiSinkSlot {
    fn shards(&self) -> usize {
        self.0.get().map_or(0, |sink| sink.shards())
    }

    fn deliver(&self, shard: ShardId, request: ApiRequest) -> Result<(), SinkError> {
        match self.0.get() {
            Some(sink) => sink.deliver(shard, request),
            None => Err(SinkError::Unavailable),
        }
    }
}
