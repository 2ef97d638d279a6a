//! One connection's slot and what a busy connection holds beyond it.
//!
//! A `Slot` is what every idle connection costs in user space (asserted at 104 bytes);
//! `Io` exists only while a handshake, queued output or a deadline needs it. Slots live
//! in the shard's slab (`crate::slab`), which keeps each slot's generation in it, and a
//! slot's key is the connection's one name: ring request tags (`user_data`), wheel
//! entries, messaging's `ConnId` (with the shard number, the owner's directory entry).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use socket2::SockRef;

use crate::edge::IpTicket;
use crate::proto::connection::Connection;
use crate::proto::frame::{Role, SharedFrame};
use crate::slab::{Generational, Key};
use crate::tls::TlsSession;

/// The ring's request tag for `key`: `kind` in the top 2 bits (see `KIND_MASK`), the
/// key's generation and slot below ([`Key::to_user_data`]).
pub(super) fn user_data(kind: u64, key: Key) -> u64 {
    kind | key.to_user_data()
}

/// The socket of a slot, for socket2's safe calls (`fd` is borrowed alone, so the
/// slot's other fields stay free to borrow).
pub(super) fn sock(fd: &OwnedFd) -> SockRef<'_> {
    SockRef::from(fd)
}

/// The raw descriptor of a slot, for io_uring requests.
pub(super) fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}

/// Where a slot is in a connection's life (a free slot holds no `Slot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Accepted; reading the HTTP upgrade request (or flushing a refusal).
    Handshake,
    /// Upgraded: WebSocket frames flow.
    Open,
    /// The WebSocket is finished (close handshake done, failed or timed out): flushing
    /// the last output, then lingering.
    Closing,
    /// Our side is finished and shut down for writing; waiting for the peer's EOF (so
    /// the last bytes we sent are not destroyed by a reset), up to the close timeout.
    Linger,
}

/// A queued chunk of output.
#[derive(Debug)]
pub(super) enum Out {
    /// A WebSocket frame, possibly shared with other connections.
    Frame(SharedFrame),
    /// Raw bytes: the HTTP response of the handshake.
    Bytes(Box<[u8]>),
}

impl Out {
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Frame(frame) => frame.as_bytes(),
            Self::Bytes(bytes) => bytes,
        }
    }
}

/// What a busy connection needs beyond its slot; `None` when idle.
#[derive(Debug, Default)]
pub(super) struct Io {
    /// Upgrade request bytes received so far (only while they arrive in pieces).
    pub(super) request: Vec<u8>,
    /// Output waiting for the socket, oldest first.
    pub(super) queue: VecDeque<Out>,
    /// Bytes of the queue's first entry already written.
    pub(super) head_written: usize,
    /// Bytes in `queue` not yet written (what the send-queue cap counts).
    pub(super) queued_bytes: usize,
    /// Handshake or linger deadline.
    pub(super) deadline: Option<Instant>,
    /// End the connection once the queue is flushed (a refused handshake).
    pub(super) close_after_flush: bool,
}

impl Io {
    pub(super) fn is_empty(&self) -> bool {
        self.request.capacity() == 0 && self.queue.is_empty() && self.deadline.is_none() && !self.close_after_flush
    }
}

/// One connection's slot.
#[derive(Debug)]
pub(super) struct Slot {
    /// The WebSocket state machine (fresh and unused before the upgrade).
    pub(super) ws: Connection,
    /// Buffers and deadlines of a busy connection.
    pub(super) io: Option<Box<Io>>,
    /// The TLS session of a connection from the TLS listener (`None` for plain ones, so
    /// a plain slot pays one pointer for TLS).
    pub(super) tls: Option<Box<TlsSession>>,
    /// The socket: freeing the slot (dropping it) closes it.
    pub(super) fd: OwnedFd,
    /// The slot's generation, kept here for the slab (`Generational`: it fills what would
    /// be padding, where beside the slot it would cost 8 bytes); only the slab sets it.
    generation: u32,
    /// The wheel tick the slot is scheduled for, 0 when unscheduled.
    pub(super) wheel_tick: u32,
    /// Where the connection is in its life.
    pub(super) phase: Phase,
    /// A one-shot write-readiness poll is pending.
    pub(super) write_armed: bool,
    /// The slot is on the shard's dirty list (has output to flush this turn).
    pub(super) dirty: bool,
    /// The peer sent its close frame: once ours is out, the socket can be closed at
    /// once (the peer sends nothing more, so no lingering is needed).
    pub(super) peer_closed: bool,
    /// The client address's share of the per-address limits, given back at the end.
    pub(super) ip: IpTicket,
    /// The message-rate clock (`edge::MessageRate`): microseconds since the shard's
    /// epoch at which the next message is due.
    pub(super) tat: u64,
}

impl Slot {
    /// A slot for the socket `fd` just accepted, at the start of its handshake.
    pub(super) fn new(now: Instant, fd: OwnedFd, tls: Option<Box<TlsSession>>, io: Box<Io>) -> Self {
        Self {
            ws: Connection::new(Role::Server, now),
            io: Some(io),
            tls,
            fd,
            generation: 0,
            wheel_tick: 0,
            phase: Phase::Handshake,
            write_armed: false,
            dirty: false,
            peer_closed: false,
            ip: IpTicket::NONE,
            tat: 0,
        }
    }
}

impl Generational for Slot {
    fn generation(&self) -> u32 {
        self.generation
    }

    fn set_generation(&mut self, generation: u32) {
        self.generation = generation;
    }
}

#[cfg(test)]
mod size_tests {
    /// The slot, as the slab holds it, is what every idle connection costs in user space
    /// (besides the kernel's share): a guard against it growing by accident.
    #[test]
    fn a_slot_stays_within_its_budget() {
        let size = crate::slab::Slab::<super::Slot>::SLOT_BYTES;
        eprintln!("Slot is {size} bytes in the slab");
        assert_eq!(size, size_of::<super::Slot>(), "the slab adds nothing to a slot");
        assert!(size <= 96, "Slot grew to {size} bytes");
    }
}
