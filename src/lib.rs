//! wsgate: a thread-per-core WebSocket gateway for real-time messaging.
//!
//! wsgate terminates WebSocket connections and routes messages between them, aiming at
//! millions of mostly idle connections per box. This crate is the library behind the
//! `wsgate` binary. Built today: the sans-IO protocol core, the server runtime (shards,
//! connection lifecycle, drain, metrics) and its configuration, token authentication,
//! edge limits, in-process TLS, the sans-IO messaging core and its durable on-disk
//! store; scale-out comes next (the README says what works).
//!
//! # Layout
//!
//! ```text
//!  client ──TCP──▶ listener per shard (SO_REUSEPORT): the kernel picks the shard, and the
//!                  connection never moves
//!        │
//!        ▼
//!  server::ring       second io_uring per shard: multishot accept + multishot poll per
//!        │            socket; a doorbell (eventfd → socketpair) wakes the shard's task
//!        ├── a TLS listener per shard too (when configured): the slot gets a
//!        │   tls::TlsSession, which decrypts from the shard's read buffer and
//!        │   seals queued frames at flush; the plaintext takes the same path below
//!        ▼
//!  server::shard      slab of connection slots, reads into one shard buffer, bounded send
//!        │            queues flushed with one sendmsg per connection per turn, drain;
//!        │            one file per job (accept, read, upgrade, frames, send, close,
//!        │            driver, slot, handle), see its module doc
//!        ├── slab            the generational Slab<T> and its Key (slot index + 30-bit
//!        │                   generation): the connection's one name in the shard, the
//!        │                   wheel, the user_data tags, msg::ConnId and the directory's,
//!        │                   shared with the bench's workers
//!        ├── server::admission  sans-IO upgrade policy: draining → cap → address → token
//!        │                      : a flat verdict (401/429/503 or the ticket)
//!        ├── server::wheel   one timer wheel per shard: handshake, heartbeat, close, linger
//!        ▼
//!  proto::handshake   parse + validate the HTTP/1.1 upgrade ──► 101 or 4xx/5xx response
//!        │            (request, validate, lists, query, response, error: one file each)
//!  proto::connection  per-connection state machine (sans-IO): handle_input / handle_timeout
//!        │            in, events + poll_transmit (pong, ping, close) + poll_timeout out
//!        ├── proto::frame   header decode/encode, SharedFrame (encode once, send to many)
//!        ├── proto::mask    unmasking in place, many bytes at a time
//!        ├── proto::utf8    one-shot and incremental (fail-fast) UTF-8 validation
//!        └── proto::close   close codes, close payloads, ProtocolError → close code
//!
//!  msg::core::MsgShard (driven by server::shard, unless --echo): per shard, sans-IO
//!        │   connect / client frame / mesh message / tick in → frames and mesh messages out
//!        ├── msg::protocol  wsgate.v1.json: parse client messages, encode server messages
//!        ├── msg::local     local side: user / room → this shard's ConnIds
//!        ├── msg::owner     owner of hash(key) % shards: directory, seq + epoch, history,
//!        │                  offline queue, room interest by shard, presence
//!        ├── msg::store     Store trait (logs, offline queues) + the store in memory,
//!        │                  which with --store disk also encodes every change
//!        ├── msg::journal   sans-IO journal records (len | crc32c | payload) and recovery
//!        │                  (torn or corrupt tails cut) ──▶ server::journal: the data
//!        │                  directory, segments, the writer task (group commit, fsync,
//!        │                  compaction, disk budget) on the shard's executor
//!        └── msg::mesh      MeshMsg + one bounded SPSC ring per ordered shard pair,
//!                           doorbell per shard, wait-then-shed when a ring is full
//!
//!  main.rs ── cli (the command line) ── config (one table of options: flags, env, TOML
//!          → one Config) ── sys (fd limit, start-up report); units (sizes, durations)
//!         ── serve::run: the shards, the admin listener, signals, drain
//!         ── admin (/healthz, /readyz, /metrics on its own thread) ◀── metrics::Registry
//!         ── signals ──▶ Command::Drain to every shard; SIGHUP ──▶ tls::TlsContext::reload
//! ```
//!
//! - [`proto`]: the sans-IO core. No sockets, no runtime, no clock: the caller passes
//!   bytes and `now` in and takes events, bytes and deadlines out, so everything there is
//!   tested and fuzzed on plain slices.
//! - [`auth`]: token authentication before the upgrade (JWT from a header, the query or
//!   a subprotocol → an `Identity` or a 401); sans-IO once its keys are loaded.
//! - [`tls`]: rustls behind a sans-IO session (ciphertext in, plaintext and ciphertext
//!   out, caller-owned buffers) and the reloadable certificate configuration.
//! - [`server`]: the only code that touches sockets and io_uring.
//! - [`msg`]: messaging, sans-IO: the client protocol, owner shards for users and rooms
//!   (sequence numbers, history, offline queues, presence), the local side of each
//!   shard, and the cross-shard messages with their rings. Tested by a deterministic
//!   multi-shard simulation in one thread; every shard drives one (unless `--echo`).
//! - [`edge`]: limits at the edge (upgrade rate and connections per client address,
//!   message rate per connection, trusted proxies), exact across shards through one
//!   striped table touched at upgrade and close only. Connections per user are counted
//!   by each user's owner ([`msg::owner`]), in its directory entry.
//! - [`cli`]: the command line (`serve`, `token`, `bench`); [`config`], [`limits`]: every
//!   knob, with its default and what happens when it is hit; [`units`]: the syntax of
//!   sizes, durations and rates. Imports run one way: `cli` → `bench`, `config`;
//!   `bench` → `sys`, `config`, `units`; `sys` → `config`, `units`, `auth`; `config` →
//!   `units`, `logging`.
//! - [`slab`]: the generational slab and its [`Key`](slab::Key), shared by the server's
//!   shards and the bench's workers: one type names a connection everywhere.
//! - [`metrics`], [`admin`], [`sys`], [`logging`]: what operators see; `logging` is the
//!   one path for diagnostics (`tracing` events to stderr, text or JSON, rate-limited
//!   where a flood could write a line per bad client).
//! - [`serve`]: `wsgate serve` from a loaded `Config` to the exit code (what `main`
//!   calls, and what the crash tests run in a child process and kill).
//!
//! - [`bench`](mod@bench): `wsgate bench density|echo|fanout|direct`, the load generator that proves density and
//!   speed against a running gateway. Its workers are built like the shards (one
//!   connection ring per thread, a slab of small connection structs, the protocol core
//!   in the client role), so the client side costs as little per connection as the
//!   server side.
//!
//! - [`cluster`]: the fleet over Redis (`--redis`): each shard's cluster owner
//!   (sans-IO, in place of `msg::owner` when a fleet is configured; sequences, logs,
//!   offline queues, the registry and room membership in Redis functions), the RESP
//!   codec (sans-IO, bounded), `redis://` and `rediss://` URLs, a Redis Cluster's slot
//!   map, and one pipelined connection per shard (and master) that runs as a task on
//!   the shard's executor; `server::shard::cluster` is the hand-off.
//! - [`client`]: the JavaScript client of `wsgate.v1.json` (`wsgate.js`, typed by
//!   `wsgate.d.ts`; tested with Node and in headless Chromium) and a chat demo, compiled
//!   into the binary and served on the WebSocket listener by `--demo`.
//!
//! # Limits
//!
//! | limit | default | when hit |
//! |---|---|---|
//! | [`Limits::max_header_bytes`](limits::Limits::max_header_bytes) | 8 KiB | 431 Request Header Fields Too Large, connection closed |
//! | [`Limits::max_headers`](limits::Limits::max_headers) | 64 | 431 |
//! | [`Limits::max_request_line_bytes`](limits::Limits::max_request_line_bytes) | 4 KiB | 414 URI Too Long |
//! | [`Limits::max_frame_bytes`](limits::Limits::max_frame_bytes) | 1 MiB | close 1009, decided from the frame header before any payload is buffered |
//! | [`Limits::max_message_bytes`](limits::Limits::max_message_bytes) | 1 MiB | close 1009, checked at each fragment's header |
//! | control frame payload (RFC 6455, fixed) | 125 B | close 1002 |
//! | [`Limits::close_timeout`](limits::Limits::close_timeout) | 5 s | connection dropped (`close_timeouts`); also the linger after a failure |
//! | [`Limits::ping_interval`](limits::Limits::ping_interval) | 25 s | server sends a ping after this much silence |
//! | [`Limits::idle_timeout`](limits::Limits::idle_timeout) | 60 s | close 1001 "heartbeat timeout" (`heartbeat_timeouts`) |
//! | [`Config::max_connections`](config::Config::max_connections) | 1,000,000 (split over shards) | 503 before the upgrade (`connection_limit`) |
//! | [`Config::max_handshakes_per_shard`](config::Config::max_handshakes_per_shard) | 1024 | 503 at once (`handshake_limit`) |
//! | [`Config::handshake_timeout`](config::Config::handshake_timeout) | 10 s | connection closed (`handshake_timeout`) |
//! | [`Config::send_queue_bytes`](config::Config::send_queue_bytes) | 256 KiB | slow consumer: queue dropped, close 1008 (`slow_consumer_closes`) |
//! | [`Config::shard_send_budget_bytes`](config::Config::shard_send_budget_bytes) | 1 GiB | the connection growing its queue is closed as a slow consumer |
//! | [`Config::read_buffer_bytes`](config::Config::read_buffer_bytes) | 64 KiB | one buffer per shard; a connection reads at most 256 KiB per turn |
//! | [`EdgeConfig::upgrade_rate_per_ip`](edge::EdgeConfig::upgrade_rate_per_ip), [`upgrade_burst_per_ip`](edge::EdgeConfig::upgrade_burst_per_ip) | 100/s, 500 | 429 + `Retry-After` (`wsgate_edge_limit_hits_total{limit="upgrade_rate"}`) |
//! | [`EdgeConfig::max_connections_per_ip`](edge::EdgeConfig::max_connections_per_ip) | no cap | 429 (`connections_per_ip`) |
//! | [`MsgLimits::max_connections_per_user`](msg::MsgLimits::max_connections_per_user) | 16 | kept by the user's owner (messaging mode only): newest wins: the oldest gets close 1008 (`user_replaced`); oldest wins: the new one gets close 1008 right after its 101 (`connections_per_user`) |
//! | [`EdgeConfig::message_rate`](edge::EdgeConfig::message_rate), [`message_burst`](edge::EdgeConfig::message_burst) | 100/s, 200 | close 1008 "message rate exceeded" (`message_rate`) |
//! | [`EdgeConfig::max_tracked_ips`](edge::EdgeConfig::max_tracked_ips) | 1,000,000 | new addresses let in uncounted (`ip_table_full`) |
//! | TLS read buffer ([`tls::MIN_READ_BUFFER_BYTES`]) | 32 KiB at least with TLS on | configuration refused (a whole record must fit); the shard also keeps a plaintext buffer of the same size |
//! | [`tls::SESSION_CACHE_ENTRIES`] | 16,384 per process | the oldest session is forgotten; that client does a full handshake |
//! | [`Config::drain_window`](config::Config::drain_window), [`Config::drain_timeout`](config::Config::drain_timeout) | 10 s, 30 s | close frames spread over the window; what is left at the deadline is dropped |
//! | [`MsgLimits::history_max_messages`](msg::MsgLimits::history_max_messages), `_bytes`, `_age` | 256, 256 KiB, 10 min per inbox / room | oldest forgotten (`history_trimmed`); a resume from before it gets `resync` |
//! | [`MsgLimits::offline_max_messages`](msg::MsgLimits::offline_max_messages), `_bytes`, `_age` | 256, 256 KiB, 24 h per user | oldest dropped (`offline_dropped`); aged out (`offline_expired`) |
//! | [`MsgLimits::max_rooms_per_connection`](msg::MsgLimits::max_rooms_per_connection) | 64 | `error: too_many_rooms` |
//! | [`MsgLimits::max_room_name_bytes`](msg::MsgLimits::max_room_name_bytes), `max_user_id_bytes`, `max_payload_bytes` | 128 B, 256 B, 64 KiB | `error: too_large` |
//! | [`MsgLimits::presence_event_max_members`](msg::MsgLimits::presence_event_max_members) | 100 | member counts (one per tick) instead of join/leave events |
//! | [`MsgLimits::ring_depth`](msg::MsgLimits::ring_depth), [`ring_full_wait`](msg::MsgLimits::ring_full_wait) | 4096 slots, 5 ms | data waits in the outbox up to the bound, then is shed (`mesh_shed`, `error: overloaded`); control is never shed |
//!
//! # Invariants
//!
//! - An idle connection is one slot in its shard's slab (128 bytes, asserted in tests:
//!   the 72-byte protocol state machine, fd, generation, wheel tick, flags, the user
//!   id, the address ticket and the message-rate clock) and one
//!   kernel poll entry: no buffer, no task, no timer object. Buffers exist only while a
//!   handshake, a split message or control frame, queued output or a close is in
//!   progress. A TLS connection adds one boxed rustls session (about 2.3 KB idle,
//!   asserted under 4 KiB in `tls::tests`); its unfinished-record and ciphertext
//!   buffers exist only while they hold bytes. A plain slot pays one pointer for TLS.
//! - A declared length is checked against its limit before a byte is buffered.
//! - After a close frame is queued, no data frame can be sent
//!   ([`proto::connection::Connection::can_send`]) and nothing follows the close.
//! - A completion or timer entry for a closed connection can never reach the next
//!   connection in the same slot: both carry the slot's generation.
//! - Messaging (`msg`, property-tested in its simulation): per connection, an inbox's
//!   and a room's messages arrive in sequence order, never twice; without shedding,
//!   with no gap after the `welcome` / `joined` position. A room publish crosses each
//!   ring once per interested shard and is encoded once.
//! - Every cross-shard queue is bounded: data waits at most `mesh_ring_full_wait` and
//!   `mesh_ring_depth` messages per peer before it is shed and counted; control
//!   messages (directory, membership, recovery) are never shed.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod msg;
pub mod proto;
pub mod serve;
pub mod server;
pub mod slab;
pub(crate) mod stamp;
pub mod sys;
#[cfg(test)]
mod testalloc;
pub mod tls;
pub mod units;
