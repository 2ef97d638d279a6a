//! Scale-out over Redis: many gateway processes and hosts act as one gateway
//! (`--redis URL`). Without the flag nothing here runs and the single box works as
//! before.
//!
//! ```text
//!  node A (process)                       Redis                       node B
//!  shard 0 ──one RESP3 connection──▶  functions (wsg_*) ◀──────── shard 0
//!  shard 1 ──one RESP3 connection──▶  keys {u:..} {r:..}  ◀─────── shard 1
//!     ▲  pushes: wsg:n:A/1 (its users)  pub/sub            pushes ──▶ ...
//!     └──        wsg:{r:room} (its rooms, once per node)
//! ```
//!
//! - [`owner`]: [`owner::ClusterOwner`], the owner side of a shard in a fleet. It takes
//!   the same owner messages as the single-box `msg::owner::Owner` and answers with the
//!   same local-side messages, but sequence numbers, epochs, histories, offline queues,
//!   the registry and room membership live in Redis; it keeps only this node's
//!   directory (which local shards have a user's connections or a room's members).
//! - `functions.lua`: the Redis functions (`FUNCTION LOAD REPLACE` on every connect).
//!   Each works on one user's or one room's keys, under one hash tag, atomically: a
//!   send takes the inbox's next seq, stores the message in the history, publishes it
//!   to the channel of every registry entry and, if nobody received it, queues it
//!   offline, in one step. So a key's messages reach every node in seq order, and an
//!   ack is sent only after the reply (after Redis has the message).
//! - [`resp`], [`url`], [`conn`], [`backoff`], [`topology`]: the client layer below (a
//!   bounded RESP2/3 codec, `redis://` and `rediss://` URLs, one pipelined connection
//!   per shard and master with a bounded outbox, timeouts, reconnects with backoff and
//!   jitter, the cluster's slot map).
//!
//! # Keys and functions
//!
//! | key | what |
//! |---|---|
//! | `wsg:{u:USER}:i` | hash: inbox epoch `e`, last seq `s` |
//! | `wsg:{u:USER}:h` | list: the inbox history, `"<ms> <frame>"`, last entry = seq `s` |
//! | `wsg:{u:USER}:o` | list: the offline queue |
//! | `wsg:{u:USER}:s`, `:k` | hashes: seq → sender and client id (receipts), seq → acknowledged |
//! | `wsg:{u:USER}:c` | hash: the registry, `"<node>/<shard>"` → connections there |
//! | `wsg:{r:ROOM}:i`, `:h` | the room's epoch, seq, member connections; its history |
//! | `wsg:{r:ROOM}:m` | hash: member user → nodes where they are a member |
//! | `wsg:nodes` | sorted set: live node ids, scored by when their liveness ends |
//! | `wsg:t:<node>/<shard>` | hash: what the shard wrote that its next life must undo |
//!
//! Channels: `wsg:n:<node>/<shard>` (a shard's users: inbox messages and receipts) and
//! the room key prefix `wsg:{r:ROOM}` (subscribed by the room's owner shard on each node
//! with members, so a node gets each room message once however many members it has).
//!
//! History and offline entries expire with `history_max_age` / `offline_max_age` (key
//! TTLs, renewed on every write, and the age checked on read); counts are trimmed to
//! `history_max_messages` / `offline_max_messages` on write. The byte caps
//! (`*_max_bytes`) are not applied in Redis.
//!
//! # Why a node's liveness and not a TTL per user
//!
//! The registry is written on connect and disconnect only (one function call each) and
//! never refreshed: each shard renews its node in `wsg:nodes` (every `node_ttl / 4`, at
//! most every second) and reads the live set back in the same call. Presence counts
//! only registry entries of live nodes, and a connect removes entries of dead ones, so
//! a node killed without a drain leaves presence within `node_ttl`, at the cost of one
//! command per shard per renewal, not one per idle connection (the seeds' per-user
//! TTL refreshed by heartbeats costs a command per connection per period: at a million
//! connections that is Redis's whole budget). A message sent to a dead node's channel
//! finds no subscriber and is queued offline by the same function. A node that
//! restarts under the same id removes what its previous life left (`wsg:t:...`).
//!
//! # Round trips
//!
//! Everything one shard's turn produced for Redis goes out as one batch (one write, one
//! round trip), replies matched in order; pushes arrive on the same connection (RESP3
//! allows commands on a subscribed connection, so a shard needs one connection, not
//! two). A send costs one function call; its delivery to another node is a push, no
//! command. A receipt costs two (the ack, then the delivery to the sender's entries).
//!
//! # Faults
//!
//! Redis down, restarting or slow past `--redis-command-timeout` (2 s): requests that need it
//! (send, publish, ack, resume, join, presence; the API's too) are answered `error:
//! unavailable` (API: 503), counted in `wsgate_cluster_unavailable_total`; connections
//! stay open; `/readyz` answers 503 `redis unavailable`; the connection reconnects with
//! backoff and jitter; on every (re)connect each shard loads the functions, subscribes
//! again and sets its registry entries again (an empty Redis after a restart learns who
//! is where without clients reconnecting). A connection opened while Redis is away is
//! closed with 1013 (try again later): there is no inbox position for its `welcome`.
//! The outbox is bounded (`--redis-outbox-bytes`, 16 MiB, and 65,536 commands): full is
//! refused at once and counted. Redis down when the gateway starts: it starts anyway, takes the URL for
//! one server and connects in the background.
//!
//! # Redis Cluster and TLS
//!
//! [`topology`] asks `CLUSTER SLOTS` at start; each shard then has one connection per
//! master and sends every command to its key's master (CRC16 of the hash tag), each
//! master's share of a turn as one pipeline. Subscriptions live on the first
//! connection: classic pub/sub reaches every node of a cluster. Two things change
//! there: `PUBLISH` counts only the subscribers on the master it ran on, so whether the
//! recipient is online comes from the registry's live entries (a message whose entries
//! are all of dead nodes is queued from the history by a second call); and a connect's
//! reply and the pushes travel on different connections, so a message pushed before
//! its `welcome` is handed to the new connection after it, and a room's first join on
//! a node reads the room only once its subscription is confirmed (a `PING` after the
//! `SUBSCRIBE` on the subscriber connection), so no publish falls between the two. The layout is learnt once:
//! a resharding or failover shows as `MOVED`/`ASK` replies, answered `unavailable` and
//! logged, until the next start. `rediss://` runs TLS (rustls, via `futures-rustls`
//! over the shard's glommio socket) with roots from `--redis-ca` or the system bundle.
//!
//! Not built: live re-discovery of a cluster's layout, sequencing while Redis is away
//! (a node cut off from Redis refuses sends even between its own users rather than
//! fork a sequence another node may be extending), room member counts after Redis lost its data (the registry is
//! restored, room membership counts are not until members rejoin), and sharded pub/sub
//! (`SSUBSCRIBE`: it would spread the cluster's pub/sub load over the masters).
//!
//! # Why our own RESP codec
//!
//! The `redis-protocol` crate is a good sans-IO codec, but it decodes recursively with
//! no depth limit (one Rust stack frame per nested `*1\r\n`: four bytes from a bad
//! server per frame, a stack overflow, which aborts the process rather than failing one
//! connection) and has no bound of its own on declared sizes, so we would have to scan
//! every reply ourselves before handing it over anyway. Once the bounded scan exists
//! (the half of a decoder that is hard to get right), building the values is a small
//! function, and the codec is about 600 lines with its docs and no new crates (`redis-protocol`
//! would bring `nom`, `bytes` and `cookie-factory`), checks every declared length
//! before buffering like the rest of the gateway's parsers, and is tested here at every
//! split offset and against garbage. Client crates (`redis`, `fred`) need tokio or
//! their own threads: they do not belong on a shard's reactor.

pub mod backoff;
pub mod conn;
pub mod owner;
pub mod resp;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
pub mod topology;
pub mod url;

pub use backoff::Backoff;
pub use conn::{Batch, ConnConfig, Driver, Failed, Redis, RedisStats, Refused, Reply};
pub use resp::{DecodeError, Limits, Value};
pub use topology::Topology;
pub use url::{RedisUrl, UrlError, read_password_file};
