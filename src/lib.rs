//! wsgate: a thread-per-core WebSocket gateway for real-time messaging.
//!
//! (Architecture map and limits table: written as the crate grows.)
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod limits;
pub mod proto;
