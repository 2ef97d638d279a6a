//! wsgate: a thread-per-core WebSocket gateway for real-time messaging.
//!
//! wsgate terminates WebSocket connections and routes messages between them, aiming at
//! millions of mostly idle connections per box. This crate is the library behind the
//! `wsgate` binary. Today it holds the **protocol core**; the server runtime, messaging
//! and scale-out are built on it in later steps (the README says what works).
//!
//! # Layout
//!
//! ```text
//!  bytes from a socket                                    bytes to a socket
//!        │                                                       ▲
//!        ▼                                                       │
//!  proto::handshake   parse + validate the HTTP/1.1 upgrade ──► 101 or 4xx/5xx response
//!        │            (httparse; "need more" on partial input)
//!        ▼
//!  proto::connection  per-connection state machine (sans-IO):   poll_transmit: pong,
//!        │            handle_input(now, bytes) → events          ping, close frames
//!        │            handle_timeout(now) → heartbeat, close     poll_timeout: deadline
//!        ├── proto::frame   header decode/encode, SharedFrame (encode once, send to many)
//!        ├── proto::mask    unmasking in place, word/SIMD at a time
//!        ├── proto::utf8    one-shot and incremental (fail-fast) UTF-8 validation
//!        └── proto::close   close codes, close payloads, ProtocolError → close code
//!        ▼
//!  events: Message (borrowed from the read buffer when whole), Close, Error
//! ```
//!
//! - [`limits`]: every limit of the protocol core, with its default and what happens
//!   when it is hit.
//! - [`proto`]: the sans-IO core. No sockets, no runtime, no clock: the caller passes
//!   bytes and `now` in and takes events, bytes and deadlines out, so everything here is
//!   tested and fuzzed on plain slices.
//!
//! - [`bench`]: `wsgate bench density|echo`, the load generator that proves density and
//!   speed against a running gateway. Its workers are built like the shards (one
//!   connection ring per thread, a slab of small connection structs, the protocol core
//!   in the client role), so the client side costs as little per connection as the
//!   server side.
//!
//! Planned, not built yet: `server/` (glommio shards, SO_REUSEPORT listeners, the
//! io_uring wait path), `shard/`, `mesh/`, `rooms/`, `store/`, `cluster/`, `admin/`.
//! The intended design is in the project's architecture notes; this map is updated as
//! each lands.
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
//! | [`Limits::close_timeout`](limits::Limits::close_timeout) | 5 s | connection reported closed (`Timeout::Close`) |
//! | [`Limits::ping_interval`](limits::Limits::ping_interval) | 25 s | server sends a ping after this much silence |
//! | [`Limits::idle_timeout`](limits::Limits::idle_timeout) | 60 s | close 1001 "heartbeat timeout" (`Timeout::Heartbeat`) |
//!
//! # Invariants
//!
//! - An idle connection ([`proto::connection::Connection`]) is one small struct (at most
//!   80 bytes, asserted in tests) with no heap allocation: buffers exist only while a
//!   message or control frame is split across reads, a pong is owed, or a close is in
//!   progress.
//! - A declared length is checked against its limit before a byte is buffered.
//! - After a close frame is queued, no data frame can be sent
//!   ([`proto::connection::Connection::can_send`]) and nothing follows the close.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod admin;
pub mod bench;
pub mod config;
pub mod limits;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod sys;
