//! Scale-out over Redis: the client layer (issue 12, first part).
//!
//! **Used by tests only for now.** Nothing in the gateway opens a Redis connection yet:
//! there is no `--redis` flag, and no shard runs a [`Redis`] task. What is here is the
//! layer the features will stand on, tested against a real `redis-server`:
//!
//! - [`resp`]: the RESP2/RESP3 codec, sans-IO (commands into a caller buffer, replies
//!   from a byte slice: "need more" or `(value, used)`), bounded against a bad server.
//! - [`url`]: `redis://` / `rediss://` URLs (user, password, host, port, db) and
//!   passwords read from a file; a password is a [`crate::auth::Secret`] and never shows
//!   in `Debug` or `Display`.
//! - [`conn`]: one pipelined connection as a task on a shard's glommio executor:
//!   connect with a timeout, `HELLO 3` (RESP2 if refused) + `AUTH` + `SELECT`, every
//!   queued batch in one write and its replies in order, a bounded outbox (full or down:
//!   refused at once, counted), a command timeout, reconnects with exponential backoff
//!   and jitter ([`backoff`]), counters.
//!
//! Next (the rest of issue 12): the `--redis` flag and one connection per shard started
//! with the shard; a subscriber connection per shard (sharded pub/sub) whose pushes feed
//! the shard's mesh; the registry and presence keys written on connect/disconnect and
//! refreshed in one pipeline per shard per tick; cross-node delivery, room fan-out and
//! shared sequence numbers; `/readyz` and metrics from [`RedisStats`]; `rediss://` over
//! `crate::tls` (refused by [`ConnConfig::from_url`] until then); Redis Cluster slots.
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
pub mod url;

pub use backoff::Backoff;
pub use conn::{Batch, ConnConfig, Driver, Failed, Redis, RedisStats, Refused, Reply};
pub use resp::{DecodeError, Limits, Value};
pub use url::{RedisUrl, UrlError, read_password_file};
