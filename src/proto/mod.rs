//! The sans-IO protocol core: HTTP upgrade and RFC 6455, with no sockets, no runtime and
//! no clock. Bytes and `now` go in; events, bytes to send and the next deadline come out.
//!
//! - [`handshake`]: parse and validate the upgrade request, build the 101 or the error
//!   response.
//! - [`frame`]: frame headers (decode and encode), shared pre-encoded frames.
//! - [`mask`]: fast payload unmasking.
//! - [`utf8`]: one-shot and incremental UTF-8 validation.
//! - [`close`]: close codes and close frame payloads.
//! - [`deflate`]: permessage-deflate (RFC 7692): negotiation, and the per-shard
//!   compressor and bounded inflater.
//! - [`connection`]: the per-connection state machine built from the pieces above.

pub mod close;
pub mod connection;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;
