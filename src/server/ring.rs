//! The shard's connection ring: a second io_uring, beside glommio's own, that watches
//! every socket of the shard, and the doorbell that wakes the shard's glommio task
//! when it has completions.
//!
//! Why a second ring: glommio's `TcpStream` costs a task and a reactor `Source` per
//! connection (about 1.1 KB idle, measured), while a multishot `POLL_ADD` per socket
//! costs one kernel poll entry and nothing in user space until the socket is readable.
//! The listener uses multishot `ACCEPT` in the same ring.
//!
//! The doorbell: the ring signals an eventfd whenever it posts a completion. A linked
//! pair of requests sits in the ring itself: `READ(eventfd)` then `WRITE(socketpair,
//! 1 byte)`, both without completions of their own. When a completion arrives the read
//! finishes, the write rings the socketpair, and the glommio task waiting on the other
//! end of the socketpair (an ordinary glommio `UnixStream`) wakes, re-arms the pair and
//! drains the ring. Other threads wake the shard the same way, by writing a byte to the
//! socketpair ([`Bell`]). glommio offers no public way to wait on an eventfd or on a ring
//! fd; the socketpair is what makes the whole path use public APIs only.
//!
//! The pair writes [`PAIR_BYTE`], other threads write [`BELL_BYTE`]: a wake-up re-arms
//! the pair only when the pair's own byte is among what it read
//! ([`ConnRing::on_bell_bytes`]). Re-arming on every wake would leave one more pair
//! pending in the kernel each time another thread rang while the pair was still armed,
//! and each pending pair writes its byte on the next completion: the pairs would pile up
//! under cross-shard traffic (a leak found by reproducing it with these io_uring calls;
//! `tests::the_doorbell_pair_is_rearmed_only_when_it_fired` guards it).

use std::cell::UnsafeCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

/// `user_data` of the doorbell requests (they only complete on error, and then the
/// doorbell must be armed again).
pub const BELL_DATA: u64 = u64::MAX;
/// `user_data` of requests whose completion needs no action (poll removal, cancel).
pub const NOOP_DATA: u64 = u64::MAX - 1;

/// The byte [`Bell::ring`] writes (another thread, or the shard itself, wants a turn).
pub const BELL_BYTE: u8 = 1;
/// The byte the armed doorbell pair writes when the ring posted a completion: the pair
/// is spent and must be armed again.
pub const PAIR_BYTE: u8 = 2;

/// The pair's write buffer: a static, so its address is valid for as long as any kernel
/// request may read it (even while a ring is torn down after its drop), with nothing
/// leaked per ring.
static PAIR_WRITE: u8 = PAIR_BYTE;

/// Where every ring's armed eventfd read stores the counter. Nothing ever reads it: the
/// value is discarded, only the read's completion matters. One static sink for all rings
/// (the kernel's writes to it race only with each other, never with Rust code), so no
/// ring leaks a buffer and none dangles while a dropped ring is torn down.
struct EventfdSink(UnsafeCell<u64>);

// SAFETY: no Rust code reads or writes the cell; only the kernel writes it, through the
// raw pointer handed to io_uring.
unsafe impl Sync for EventfdSink {}

static EVENTFD_SINK: EventfdSink = EventfdSink(UnsafeCell::new(0));

/// Wakes a shard from any thread.
#[derive(Debug, Clone)]
pub struct Bell {
    fd: Arc<OwnedFd>,
}

impl Bell {
    /// Rings: the shard's task wakes and looks at its ring and its command inbox. A full
    /// socketpair means a ring is already pending, so errors are ignored.
    pub fn ring(&self) {
        let byte = BELL_BYTE;
        // SAFETY: writes one byte from a live stack variable to a socket we own; the
        // result is deliberately ignored (EAGAIN means the bell is already rung).
        unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                (&raw const byte).cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
        }
    }
}

/// A completion, copied out of the ring.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    /// What the request was for (see `shard.rs` for the encoding).
    pub user_data: u64,
    /// The result: a value, or `-errno`.
    pub result: i32,
    /// Whether a multishot request stays armed.
    pub more: bool,
}

/// The ring, its eventfd and the doorbell's socketpair end.
pub struct ConnRing {
    ring: IoUring,
    eventfd: OwnedFd,
    bell: Bell,
}

impl std::fmt::Debug for ConnRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnRing").field("fd", &self.ring.as_raw_fd()).finish()
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl ConnRing {
    /// A ring with `entries` submission slots and room for `cq_entries` completions
    /// (bursts beyond it wait in the kernel: IORING_FEAT_NODROP), and the doorbell's
    /// far end, for the glommio task to wait on.
    pub fn new(entries: u32, cq_entries: u32) -> io::Result<(Self, OwnedFd)> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_cqsize(cq_entries)
            .build(entries)?;
        // SAFETY: plain syscall; the returned fd is checked and owned below.
        let efd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: `efd` is a fresh descriptor nobody else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let mut pair = [0 as libc::c_int; 2];
        let kind = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: `pair` has room for the two descriptors socketpair writes.
        cvt(unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, pair.as_mut_ptr()) })?;
        // SAFETY: both descriptors are fresh and owned from here on.
        let (tx, rx) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
        let mut this = Self {
            ring,
            eventfd,
            bell: Bell { fd: Arc::new(tx) },
        };
        this.arm_bell();
        this.submit()?;
        Ok((this, rx))
    }

    /// A handle that wakes this shard from any thread.
    pub fn bell(&self) -> Bell {
        self.bell.clone()
    }

    /// Takes the bytes a wake-up read from the doorbell's far end: if the pair's own byte
    /// is among them the pair has fired, and it is armed again (call before draining
    /// completions, so a completion posted after the drain rings it anew). Bytes from
    /// [`Bell::ring`] alone leave the pair as it is: it is still pending.
    pub fn on_bell_bytes(&mut self, bytes: &[u8]) {
        if bytes.contains(&PAIR_BYTE) {
            self.arm_bell();
        }
    }

    /// Arms the doorbell pair: at start, after the pair fired ([`Self::on_bell_bytes`]),
    /// and after it failed (its `BELL_DATA` completion).
    pub fn arm_bell(&mut self) {
        let counter: *mut u64 = EVENTFD_SINK.0.get();
        let read = opcode::Read::new(types::Fd(self.eventfd.as_raw_fd()), counter.cast(), 8)
            .build()
            .flags(squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS)
            .user_data(BELL_DATA);
        let write = opcode::Write::new(types::Fd(self.bell.fd.as_raw_fd()), &raw const PAIR_WRITE, 1)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(BELL_DATA);
        // SAFETY: both buffers are statics, valid for as long as the kernel may use them;
        // the sink is written only by the kernel and never read.
        unsafe {
            self.push_raw(&read);
            self.push_raw(&write);
        }
    }

    /// Queues a request, submitting first if the queue is full.
    ///
    /// # Safety
    /// Any buffer the entry points to must stay valid until its completion.
    unsafe fn push_raw(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: forwarded from the caller.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                assert!(e.raw_os_error() == Some(libc::EBUSY), "io_uring submit failed: {e}");
            }
        }
    }

    /// Multishot accept on `listener`.
    pub fn accept_multi(&mut self, listener: RawFd, user_data: u64) {
        let entry = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data);
        // SAFETY: accept carries no buffer.
        unsafe { self.push_raw(&entry) }
    }

    /// Multishot readiness for reading (and peer hang-up) on `fd`.
    pub fn poll_read_multi(&mut self, fd: RawFd, user_data: u64) {
        let mask = (libc::POLLIN | libc::POLLRDHUP) as u32;
        let entry = opcode::PollAdd::new(types::Fd(fd), mask)
            .multi(true)
            .build()
            .user_data(user_data);
        // SAFETY: poll carries no buffer.
        unsafe { self.push_raw(&entry) }
    }

    /// One-shot readiness for writing on `fd`.
    pub fn poll_write_once(&mut self, fd: RawFd, user_data: u64) {
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
            .build()
            .user_data(user_data);
        // SAFETY: poll carries no buffer.
        unsafe { self.push_raw(&entry) }
    }

    /// Removes the poll request made with `user_data` (before its socket is closed: a
    /// pending poll holds a reference to the file, which would keep the socket open).
    pub fn poll_remove(&mut self, user_data: u64) {
        let entry = opcode::PollRemove::new(user_data).build().user_data(NOOP_DATA);
        // SAFETY: no buffer.
        unsafe { self.push_raw(&entry) }
    }

    /// Cancels any request made with `user_data` (the multishot accept on drain).
    pub fn cancel(&mut self, user_data: u64) {
        let entry = opcode::AsyncCancel::new(user_data).build().user_data(NOOP_DATA);
        // SAFETY: no buffer.
        unsafe { self.push_raw(&entry) }
    }

    /// Submits queued requests without waiting.
    pub fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moves up to `max` completions into `out`. When the completion queue has
    /// overflowed, the kernel keeps the excess aside and hands it over only on an
    /// `io_uring_enter` that asks for events, without ringing the eventfd again: so an
    /// empty queue with the overflow flag set is flushed here, or those completions
    /// (and the shard) would wait for some unrelated event. A failed flush is logged;
    /// [`ConnRing::try_drain`] returns it instead.
    pub fn drain(&mut self, out: &mut Vec<Completion>, max: usize) {
        if let Err(e) = self.try_drain(out, max) {
            tracing::error!(error = %e, "io_uring: flushing overflowed completions failed");
        }
    }

    /// [`ConnRing::drain`], returning a failed flush of overflowed completions (the
    /// completions already queued are moved all the same) for the caller to log: the
    /// shard rate-limits it, since it could recur on every turn.
    pub fn try_drain(&mut self, out: &mut Vec<Completion>, max: usize) -> io::Result<()> {
        let start = out.len();
        out.extend(self.ring.completion().take(max).map(|cqe| Completion {
            user_data: cqe.user_data(),
            result: cqe.result(),
            more: cqueue::more(cqe.flags()),
        }));
        if out.len() == start && self.ring.submission().cq_overflow() {
            // `submit` adds GETEVENTS when the overflow flag is set, which flushes.
            let flushed = self.submit();
            out.extend(self.ring.completion().take(max).map(|cqe| Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                more: cqueue::more(cqe.flags()),
            }));
            return flushed;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    use super::*;

    /// Reads what the doorbell's far end holds, waiting up to `wait` for the first byte
    /// and then a little longer for any that follow.
    fn read_bell(rx: &mut UnixStream, wait: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = Instant::now() + wait;
        let mut quiet_since = None;
        loop {
            let mut bytes = [0u8; 256];
            match rx.read(&mut bytes) {
                Ok(n) if n > 0 => {
                    got.extend_from_slice(&bytes[..n]);
                    quiet_since = None;
                }
                _ => {
                    let now = Instant::now();
                    if !got.is_empty() && now >= *quiet_since.get_or_insert(now + Duration::from_millis(50)) {
                        return got;
                    }
                    if got.is_empty() && now >= deadline {
                        return got;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    #[test]
    fn the_doorbell_pair_is_rearmed_only_when_it_fired() {
        let (mut ring, rx) = ConnRing::new(8, 64).expect("io_uring");
        let mut rx = UnixStream::from(rx);
        rx.set_nonblocking(true).unwrap();
        let bell = ring.bell();
        let mut completions = Vec::new();
        // Many wakes rung by other threads while the pair is pending: each wake hands
        // over what it read, as the shard does.
        for _ in 0..50 {
            bell.ring();
            let bytes = read_bell(&mut rx, Duration::from_secs(1));
            assert_eq!(bytes, [BELL_BYTE]);
            ring.on_bell_bytes(&bytes);
            ring.submit().unwrap();
        }
        // Exactly one pair is pending, not 51: with no re-arm in between, five
        // completions bring one pair byte in all (each pending pair would bring one).
        for round in 0..5u64 {
            let nop = opcode::Nop::new().build().user_data(round);
            // SAFETY: a no-op carries no buffer.
            unsafe { ring.push_raw(&nop) };
            ring.submit().unwrap();
            let wait = if round == 0 { 2000 } else { 100 };
            let bytes = read_bell(&mut rx, Duration::from_millis(wait));
            let expected: &[u8] = if round == 0 { &[PAIR_BYTE] } else { &[] };
            assert_eq!(bytes, expected, "round {round}: pending doorbell pairs piled up");
            completions.clear();
            ring.drain(&mut completions, 64);
            assert!(
                completions.iter().all(|c| c.user_data != BELL_DATA),
                "the pair failed: {completions:?}"
            );
        }
        // Armed again once it fired, the pair rings on the next completion.
        ring.on_bell_bytes(&[PAIR_BYTE]);
        let nop = opcode::Nop::new().build().user_data(99);
        // SAFETY: a no-op carries no buffer.
        unsafe { ring.push_raw(&nop) };
        ring.submit().unwrap();
        assert_eq!(read_bell(&mut rx, Duration::from_secs(2)), [PAIR_BYTE]);
    }

    #[test]
    fn overflowed_completions_are_not_left_behind() {
        // A completion queue of 8 and 40 completions: 32 go to the kernel's overflow
        // list. Draining must hand over all 40 without any other event happening.
        let (mut ring, _bell) = ConnRing::new(4, 8).expect("io_uring");
        for i in 0..40u64 {
            let nop = opcode::Nop::new().build().user_data(i);
            // SAFETY: a no-op carries no buffer.
            unsafe { ring.push_raw(&nop) };
        }
        ring.submit().unwrap();
        let mut seen = Vec::new();
        for _ in 0..100 {
            let before = seen.len();
            ring.drain(&mut seen, 1024);
            if seen.len() == before {
                break;
            }
        }
        let mut ids: Vec<u64> = seen.iter().map(|c| c.user_data).filter(|&d| d < 40).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..40).collect::<Vec<_>>());
    }
}
