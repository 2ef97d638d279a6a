//! Messaging: the client protocol, the owner-shard logic for users and rooms, the
//! cross-shard messages and the rings that carry them. Sans-IO, like `proto/`: every
//! entry point takes `now` and returns what must go out, so the whole of it runs in a
//! one-thread, multi-shard simulation (`sim.rs`).
//!
//! # How a message flows
//!
//! ```text
//!  client frame ──▶ MsgShard::handle_client_frame (the connection's shard)
//!                     │ protocol::parse → LocalHub checks (sizes, claims, room cap)
//!                     ▼
//!                  MeshMsg to the key's owner: owner_of(key) = hash(key) % shards
//!                     │ (same shard: a local queue; else: the SPSC ring to that shard)
//!                     ▼
//!                  Owner (users and rooms whose hash lands on this shard):
//!                     sequence number, history (Store), offline queue, directory,
//!                     presence; encodes the outgoing frame once (SharedFrame)
//!                     │
//!                     ├─▶ ack to the sender's connection
//!                     └─▶ one MeshMsg per interested shard (never per member)
//!                           ▼
//!                  LocalHub on each shard: user / room → local ConnIds
//!                     ▼
//!                  Output::Send { conn, frame } (an Arc clone per recipient)
//! ```
//!
//! - [`protocol`]: the versioned client protocol (`wsgate.v1.json`): parsing client
//!   messages with bounded fields, encoding server messages straight into JSON bytes.
//! - [`store`]: the [`Store`](store::Store) trait (inbox and room logs, offline
//!   queues) and its in-memory implementation.
//! - [`owner`]: the owner side: directory, sequences, history, offline queues, rooms,
//!   presence.
//! - [`local`]: the local side: which connections of this shard belong to which user
//!   and room.
//! - [`mesh`]: [`MeshMsg`](mesh::MeshMsg), what shards tell each other, and
//!   [`Endpoint`](mesh::Endpoint), the bounded SPSC rings between every ordered pair of
//!   shards with a doorbell and the full-ring policy.
//! - [`core`]: [`MsgShard`](core::MsgShard), one shard's owner + hub + routing: the API
//!   the server's shard calls (connect, disconnect, client frame, mesh message, tick →
//!   frames for connections and messages for other shards).
//!
//! - [`api`]: the backend HTTP API's requests to the shards ([`api::ApiRequest`], with
//!   the channel the owner answers on) and the [`api::ApiSink`] the admin thread hands
//!   them to (`server::ApiShards`: `Command::Api` into the shard's inbox).
//!
//! `server::shard` drives a [`core::MsgShard`] per shard (unless `--echo`), and
//! `crate::admin` serves the backend API (`/api/...`) from its own threads.
#![forbid(unsafe_code)]

use std::str::FromStr;
use std::time::Duration;

use hashbrown::HashMap;

pub mod api;
pub mod chunked;
pub mod core;
pub mod dense;
pub mod journal;
pub mod local;
pub mod mesh;
pub mod owner;
pub mod protocol;
pub mod store;

#[cfg(test)]
pub(crate) mod sim;

/// A shard's index, `0..shards`.
pub type ShardId = u16;

/// A user id or room name, shared between the maps and messages that name it (an
/// `Arc<str>` so a key crosses shards with a reference count, not a copy). triomphe's:
/// one 8-byte count before the bytes where the standard one keeps a strong and a weak
/// count. mimalloc rounds small blocks to 16 bytes, so an id of up to 8 bytes takes 16
/// where it took 32, one of 17-24 bytes (a 64-bit snowflake id) 32 where it took 48,
/// one of 33-40 (a UUID) 48 where it took 64; the others take the same.
pub type Key = triomphe::Arc<str>;

/// An opaque connection handle, unique within its shard: the shard's slab key (slot
/// index and generation, [`crate::slab::Key`]), so a stale one never reaches the slot's
/// next connection. This module never looks inside.
pub type ConnId = crate::slab::Key;

/// A position in an inbox or room log: the log's epoch (it changes when the history is
/// lost, so a stale position is recognised) and the last sequence number seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Position {
    /// Identifies one life of the log; never 0.
    pub epoch: u64,
    /// The last sequence number seen; 0 before the first message.
    pub seq: u64,
}

impl Position {
    /// What a client that saw `self` may get from a log now at `current`: a resync
    /// (the epoch changed, or the client is ahead), nothing to replay (`false`: it is up
    /// to date), or a replay of what follows `self.seq` (`true`; complete or `too_old`
    /// is for the caller to tell from what the log still holds).
    pub fn replay_from(self, current: Position) -> Result<bool, protocol::ResyncReason> {
        if self.epoch != current.epoch {
            Err(protocol::ResyncReason::EpochChanged)
        } else if self.seq > current.seq {
            Err(protocol::ResyncReason::Ahead)
        } else {
            Ok(self.seq < current.seq)
        }
    }
}

/// Epochs fit in 53 bits: exact in JSON numbers (JavaScript clients) and in Lua's
/// doubles (the cluster's Redis functions).
const EPOCH_MASK: u64 = (1 << 53) - 1;

/// The epoch of a new log: a stable hash of a per-run `seed`, a counter `n` and the
/// shard, in 53 bits, never 0.
pub fn new_epoch(seed: u64, n: u64, shard: ShardId) -> u64 {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&n.to_le_bytes());
    bytes[16..18].copy_from_slice(&shard.to_le_bytes());
    (stable_hash(&bytes) & EPOCH_MASK).max(1)
}

/// A stable 64-bit hash of `bytes` (FNV-1a with a final avalanche), the same in every
/// process and on every run: the owner of a key must not depend on std's randomly
/// seeded SipHash, or two processes (or a restart) would disagree about owners.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly and `% shards` keeps only those: finish with the
    // splitmix64 finaliser so every input bit reaches every output bit.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Which kind of key: users and rooms live in separate name spaces, so user `a` and
/// room `a` may have different owners.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// A user id (the token's `sub`).
    User,
    /// A room name.
    Room,
}

/// The owner shard of a user or room: `hash(kind, key) % shards`.
pub fn owner_of(kind: KeyKind, key: &str, shards: usize) -> ShardId {
    debug_assert!(shards >= 1 && shards <= usize::from(ShardId::MAX) + 1);
    let salt = match kind {
        KeyKind::User => 0x55u8,
        KeyKind::Room => 0x52u8,
    };
    let mut h = stable_hash(key.as_bytes());
    h ^= u64::from(salt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h = stable_hash(&h.to_le_bytes());
    (h % shards as u64) as ShardId
}

/// Every messaging limit, built from the configuration (see `config::MsgConfig`), in
/// one place so they can be reviewed side by side. Each says what happens when hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsgLimits {
    /// Messages kept per inbox and per room for recovery. Beyond: the oldest is
    /// forgotten (`history_trimmed`); a client resuming from before it must resync.
    pub history_max_messages: usize,
    /// Encoded bytes kept per inbox and per room history; as above.
    pub history_max_bytes: usize,
    /// Age after which a history entry is forgotten; as above.
    pub history_max_age: Duration,
    /// Messages waiting for an offline user. Beyond: the oldest is dropped and counted
    /// (`offline_dropped`); the newest messages are the ones a user wants.
    pub offline_max_messages: usize,
    /// Encoded bytes waiting for an offline user; as above.
    pub offline_max_bytes: usize,
    /// Age after which an offline message is dropped (`offline_expired`).
    pub offline_max_age: Duration,
    /// Rooms one connection may be in (joined or joining). Beyond: `too_many_rooms`.
    pub max_rooms_per_connection: usize,
    /// Bytes of a room name. Beyond: `too_large`.
    pub max_room_name_bytes: usize,
    /// Bytes of a user id named in a message. Beyond: `too_large`.
    pub max_user_id_bytes: usize,
    /// Bytes of a message `body` (its JSON text). Beyond: `too_large`.
    pub max_payload_bytes: usize,
    /// Rooms with more members than this get member counts (at most one per tick)
    /// instead of a join/leave event per member, and presence queries return the count
    /// without the member list.
    pub presence_event_max_members: usize,
    /// Slots of each cross-shard ring (rounded up to a power of two).
    pub ring_depth: usize,
    /// How long a data message may wait for room in a full ring before it is shed.
    pub ring_full_wait: Duration,
    /// Users and rooms one owner shard tracks at most. A send or publish that would
    /// create an entry beyond it is refused (`owner_full`); connections and keys that
    /// already have an entry are never refused. Bounds what made-up user ids and room
    /// names can make an owner hold until its sweep.
    pub max_owner_entries: usize,
    /// Open connections per user (token `sub`; generated anonymous ids are each their
    /// own user, so never over). Kept by the user's owner, which sees every connection
    /// of the user on this node: beyond it, see [`MsgLimits::user_limit_policy`]
    /// (`limit_hits{limit="user_replaced"}` or `{limit="connections_per_user"}`). 0: no
    /// cap. `--echo` has no owners and so no per-user limit.
    pub max_connections_per_user: u32,
    /// Which connection wins when a user goes over [`MsgLimits::max_connections_per_user`].
    pub user_limit_policy: UserLimitPolicy,
}

impl MsgLimits {
    /// The per-user limit.
    pub fn user_limit(&self) -> UserLimit {
        UserLimit {
            max: self.max_connections_per_user,
            policy: self.user_limit_policy,
        }
    }
}

/// Which connection stays when a user opens one more than
/// [`MsgLimits::max_connections_per_user`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UserLimitPolicy {
    /// The new connection is admitted and the user's oldest is closed (1008): a client
    /// that reconnects while its old, half-dead connection has not timed out yet is not
    /// locked out.
    #[default]
    Newest,
    /// The new connection is closed (1008, "too many connections for this user") as
    /// soon as the user's owner hears of it, right after its 101: the owner is the one
    /// place that sees all of a user's connections.
    Oldest,
}

impl FromStr for UserLimitPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "newest" => Ok(Self::Newest),
            "oldest" => Ok(Self::Oldest),
            _ => {
                Err("newest (the new connection wins, the oldest is closed) or oldest (the new one is refused)".into())
            }
        }
    }
}

impl std::fmt::Display for UserLimitPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Newest => "newest",
            Self::Oldest => "oldest",
        })
    }
}

/// The per-user connection limit as the owner applies it ([`MsgLimits::user_limit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserLimit {
    /// Connections one user may hold (0: no cap).
    pub max: u32,
    /// Which connection wins beyond it.
    pub policy: UserLimitPolicy,
}

/// Default [`MsgLimits::max_connections_per_user`]: one user's devices and tabs.
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: u32 = 16;

/// Bytes of a client-chosen `id`, fixed by the protocol: enough for a UUID or a
/// counter, small enough that echoing it costs nothing.
pub const MAX_CLIENT_ID_BYTES: usize = 64;

impl Default for MsgLimits {
    fn default() -> Self {
        Self {
            history_max_messages: 256,
            history_max_bytes: 256 * 1024,
            history_max_age: Duration::from_secs(600),
            offline_max_messages: 256,
            offline_max_bytes: 256 * 1024,
            offline_max_age: Duration::from_secs(24 * 3600),
            max_rooms_per_connection: 64,
            max_room_name_bytes: 128,
            max_user_id_bytes: crate::auth::MAX_USER_ID_BYTES,
            max_payload_bytes: 64 * 1024,
            presence_event_max_members: 100,
            ring_depth: 4096,
            ring_full_wait: Duration::from_millis(5),
            max_owner_entries: 1_000_000,
            max_connections_per_user: DEFAULT_MAX_CONNECTIONS_PER_USER,
            user_limit_policy: UserLimitPolicy::Newest,
        }
    }
}

/// Messaging counters of one shard: plain integers bumped on the hot path, like
/// [`crate::metrics::ShardMetrics`]; the shard copies them there each tick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MsgMetrics {
    /// `send` requests accepted by their owner (sequenced and stored).
    pub sends_accepted: u64,
    /// `publish` requests accepted by their owner.
    pub publishes_accepted: u64,
    /// Frames handed to local connections (one per recipient connection).
    pub frames_delivered: u64,
    /// Cross-shard messages pushed onto rings.
    pub mesh_sent: u64,
    /// Cross-shard messages taken off rings.
    pub mesh_received: u64,
    /// Data messages shed because a ring stayed full past `ring_full_wait` or the
    /// outbox of waiting data messages was full.
    pub mesh_shed: u64,
    /// Messages that found their ring full and waited in the outbox.
    pub mesh_waited: u64,
    /// Messages queued for an offline user.
    pub offline_queued: u64,
    /// Offline messages dropped because the queue was full (oldest first).
    pub offline_dropped: u64,
    /// Offline messages dropped for age.
    pub offline_expired: u64,
    /// Offline messages handed to a connection on connect.
    pub offline_delivered: u64,
    /// History entries forgotten (count, bytes or age).
    pub history_trimmed: u64,
    /// Resumes and joins answered with a replay from history.
    pub replays: u64,
    /// Resumes and joins answered with `resync` (epoch changed or history too short).
    pub resyncs: u64,
    /// Delivery receipts sent to senders.
    pub receipts: u64,
    /// Client acks naming a sequence number no longer (or never) in history.
    pub receipts_unknown: u64,
    /// Receipts dropped because the original sender had no connection (receipts are
    /// not queued offline).
    pub receipts_undeliverable: u64,
    /// Join/leave presence events sent.
    pub presence_events: u64,
    /// Member-count presence events sent for large rooms.
    pub presence_counts: u64,
    /// `error` messages sent to clients.
    pub client_errors: u64,
    /// `error` messages by code (`ErrorCode::label`).
    pub errors_by_code: HashMap<&'static str, u64>,
    /// Connections closed for frames that are not protocol messages (1003, 1008).
    pub protocol_closes: u64,
    /// Deliveries dropped because the connection was waiting for its welcome or a
    /// replay that covers them (not a loss: the replay carries them).
    pub superseded_deliveries: u64,
    /// Connections closed by the backend API's disconnect.
    pub api_disconnects: u64,
    /// Sends and publishes (client and API) refused with `storage_full`: the store's
    /// disk budget was spent.
    pub storage_full_refusals: u64,
    /// Sends and publishes refused with `owner_full` (they would have created an owner
    /// entry beyond `max_owner_entries`).
    pub owner_full_refusals: u64,
    /// Gauge: users and rooms this shard's owner tracks (what `max_owner_entries` bounds).
    pub owner_entries: u64,
}

impl MsgMetrics {
    /// Adds `other` into `self`: counters and gauges summed, labelled counters summed
    /// by label (the whole-process view of per-shard figures). Every field is named, so
    /// a new one cannot be forgotten here.
    pub fn merge(&mut self, other: Self) {
        let Self {
            sends_accepted,
            publishes_accepted,
            frames_delivered,
            mesh_sent,
            mesh_received,
            mesh_shed,
            mesh_waited,
            offline_queued,
            offline_dropped,
            offline_expired,
            offline_delivered,
            history_trimmed,
            replays,
            resyncs,
            receipts,
            receipts_unknown,
            receipts_undeliverable,
            presence_events,
            presence_counts,
            client_errors,
            errors_by_code,
            protocol_closes,
            superseded_deliveries,
            api_disconnects,
            storage_full_refusals,
            owner_full_refusals,
            owner_entries,
        } = other;
        self.sends_accepted += sends_accepted;
        self.publishes_accepted += publishes_accepted;
        self.frames_delivered += frames_delivered;
        self.mesh_sent += mesh_sent;
        self.mesh_received += mesh_received;
        self.mesh_shed += mesh_shed;
        self.mesh_waited += mesh_waited;
        self.offline_queued += offline_queued;
        self.offline_dropped += offline_dropped;
        self.offline_expired += offline_expired;
        self.offline_delivered += offline_delivered;
        self.history_trimmed += history_trimmed;
        self.replays += replays;
        self.resyncs += resyncs;
        self.receipts += receipts;
        self.receipts_unknown += receipts_unknown;
        self.receipts_undeliverable += receipts_undeliverable;
        self.presence_events += presence_events;
        self.presence_counts += presence_counts;
        self.client_errors += client_errors;
        for (k, v) in errors_by_code {
            *self.errors_by_code.entry(k).or_default() += v;
        }
        self.protocol_closes += protocol_closes;
        self.superseded_deliveries += superseded_deliveries;
        self.api_disconnects += api_disconnects;
        self.storage_full_refusals += storage_full_refusals;
        self.owner_full_refusals += owner_full_refusals;
        self.owner_entries += owner_entries;
    }

    /// Adds `other` into `self` (to sum the shards of a simulation or a scrape).
    pub fn add(&mut self, other: &Self) {
        self.merge(other.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_spreads() {
        // Fixed values: changing the hash moves every key to another owner, which a
        // rolling restart of a cluster must not do by accident.
        assert_eq!(stable_hash(b""), stable_hash(b""));
        assert_ne!(stable_hash(b"alice"), stable_hash(b"alicf"));
        let mut counts = [0usize; 4];
        for i in 0..10_000 {
            counts[usize::from(owner_of(KeyKind::User, &format!("user-{i}"), 4))] += 1;
        }
        for c in counts {
            assert!((2_000..3_000).contains(&c), "{counts:?}");
        }
        let mut both = [0usize; 2];
        for i in 0..1000 {
            both[usize::from(owner_of(KeyKind::Room, &format!("r{i}"), 2))] += 1;
        }
        assert!(both[0] > 400 && both[1] > 400, "{both:?}");
        assert_eq!(owner_of(KeyKind::User, "x", 1), 0);
    }
}
