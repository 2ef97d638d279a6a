//! One connection's slot and what a busy connection holds beyond it.
//!
//! A `Slot` is what every idle connection costs in user space (asserted at 128 bytes);
//! `Io` exists only while a handshake, queued output or a deadline needs it. The
//! `user_data` helpers pack a slot and its generation into the ring's request tags and
//! messaging's `ConnId`.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use socket2::SockRef;

use crate::edge::{IpTicket, UserTicket};
use crate::msg::ConnId;
use crate::proto::connection::Connection;
use crate::proto::frame::{Role, SharedFrame};
use crate::server::wheel::Entry;
use crate::tls::TlsSession;

use super::GEN_MASK;

pub(super) fn user_data(kind: u64, entry: Entry) -> u64 {
    kind | (u64::from(entry.gen_ & GEN_MASK) << 32) | u64::from(entry.slot)
}

/// The messaging layer's name for a connection: its slot and generation.
pub(super) fn conn_of(entry: Entry) -> ConnId {
    ConnId(u64::from(entry.slot) | (u64::from(entry.gen_) << 32))
}

pub(super) fn entry_of_conn(conn: ConnId) -> Entry {
    Entry {
        slot: conn.0 as u32,
        gen_: (conn.0 >> 32) as u32,
    }
}

pub(super) fn entry_of(user_data: u64) -> Entry {
    Entry {
        slot: user_data as u32,
        gen_: ((user_data >> 32) as u32) & GEN_MASK,
    }
}

/// The socket of a slot in use, for socket2's safe calls (`fd` is borrowed alone, so the
/// slot's other fields stay free to borrow).
pub(super) fn sock(fd: &Option<OwnedFd>) -> SockRef<'_> {
    SockRef::from(fd.as_ref().expect("a slot in use has a socket"))
}

/// The raw descriptor of a slot in use, for io_uring requests.
pub(super) fn raw(fd: &Option<OwnedFd>) -> RawFd {
    fd.as_ref().expect("a slot in use has a socket").as_raw_fd()
}

/// Where a slot is in a connection's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Not in use (on the free list).
    Free,
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
    /// The socket (`None` while the slot is free: dropping it closes the socket).
    pub(super) fd: Option<OwnedFd>,
    /// Changes every time the slot is freed (30 bits used).
    pub(super) gen_: u32,
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
    /// The user's share of the per-user limit (`NONE` before the upgrade, with the
    /// limit off, and for generated anonymous ids, which nobody can address).
    pub(super) user: UserTicket,
    /// The client address's share of the per-address limits, given back at the end.
    pub(super) ip: IpTicket,
    /// The message-rate clock (`edge::MessageRate`): microseconds since the shard's
    /// epoch at which the next message is due.
    pub(super) tat: u64,
}

impl Slot {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            ws: Connection::new(Role::Server, now),
            io: None,
            tls: None,
            fd: None,
            gen_: 0,
            wheel_tick: 0,
            phase: Phase::Free,
            write_armed: false,
            dirty: false,
            peer_closed: false,
            user: UserTicket::NONE,
            ip: IpTicket::NONE,
            tat: 0,
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// The slot is what every idle connection costs in user space (besides the kernel's
    /// share): a guard against it growing by accident.
    #[test]
    fn a_slot_stays_within_its_budget() {
        let size = size_of::<super::Slot>();
        eprintln!("Slot is {size} bytes");
        assert!(size <= 128, "Slot grew to {size} bytes");
    }
}
