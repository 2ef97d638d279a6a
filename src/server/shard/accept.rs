//! Accepting: new sockets from the shard's plain and TLS listeners.
//!
//! In: accept completions of the connection ring (a new fd, or an error such as running
//! out of descriptors). Out: a slot in the `Handshake` phase with a read poll armed and
//! a handshake deadline on the wheel, or, when the shard is draining or has too many
//! handshakes in flight, a fixed 503 written straight to the socket and the fd closed.
//! Accepting pauses for `ACCEPT_BACKOFF` after EMFILE/ENFILE. Accept errors are counted
//! and logged as warnings, rate-limited (`Noisy::Accept`): while descriptors run out,
//! every connection attempt fails.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use socket2::SockRef;

use crate::metrics::ShardMetrics;
use crate::server::ring::Completion;
use crate::tls::TlsSession;

use super::driver::Noisy;
use super::slot::{Io, Slot, user_data};
use super::{ACCEPT_BACKOFF, ACCEPT_PLAIN, ACCEPT_TLS, KIND_READ, Shard};

/// The response to a connection refused before its request was read (too many
/// concurrent handshakes): a fixed string, so refusing costs no allocation.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 24\r\n\r\ntoo many handshakes now\n";

impl Shard {
    pub(super) fn arm_accept(&mut self) {
        self.arm_accept_on(ACCEPT_PLAIN);
        self.arm_accept_on(ACCEPT_TLS);
    }

    pub(super) fn arm_accept_on(&mut self, which: u64) {
        let listener = if which == ACCEPT_TLS {
            &self.tls_listener
        } else {
            &self.listener
        };
        if let Some(listener) = listener {
            let fd = listener.as_raw_fd();
            self.ring.accept_multi(fd, which);
        }
    }

    pub(super) fn on_accept(&mut self, completion: Completion) {
        let which = completion.user_data;
        if !completion.more && self.listener.is_some() && self.drain.is_none() {
            if completion.result == -libc::EMFILE || completion.result == -libc::ENFILE {
                self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
                self.accept_paused[(which & 1) as usize] = true;
            } else {
                self.arm_accept_on(which);
            }
        }
        if completion.result < 0 {
            let errno = -completion.result;
            let label = match errno {
                libc::EMFILE | libc::ENFILE => "out_of_files",
                libc::ECANCELED => return,
                _ => "accept_error",
            };
            ShardMetrics::bump(&mut self.metrics.handshake_failures, label);
            if self.may_log(Noisy::Accept) {
                let error = std::io::Error::from_raw_os_error(errno);
                tracing::warn!(shard = self.id, reason = label, error = %error, "accept failed");
            }
            return;
        }
        // SAFETY: a successful accept hands over a new descriptor that nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(completion.result) };
        self.metrics.accepted += 1;
        if self.drain.is_some() || self.handshakes >= self.cfg.max_handshakes_per_shard {
            let label = if self.drain.is_some() {
                "draining"
            } else {
                "handshake_limit"
            };
            ShardMetrics::bump(&mut self.metrics.handshake_failures, label);
            // A TLS client would read plaintext as garbage, so it only sees the close. The
            // send is best effort (a full or reset socket gets no answer); dropping `fd`
            // closes it.
            if which != ACCEPT_TLS {
                let _ = SockRef::from(&fd).send_with_flags(BUSY_RESPONSE, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
            }
            return;
        }
        let tls = if which == ACCEPT_TLS {
            match self.new_tls_session() {
                Some(session) => Some(session),
                None => return, // Dropping `fd` closes it.
            }
        } else {
            None
        };
        // Nagle's algorithm would hold back small messages; a messaging gateway wants
        // them out. A failure leaves a working socket with Nagle on.
        let _ = SockRef::from(&fd).set_nodelay(true);
        let raw_fd = fd.as_raw_fd();
        let now = self.now;
        if tls.is_some() {
            self.metrics.tls_sessions += 1;
        }
        let io = Box::new(Io {
            deadline: Some(now + self.cfg.handshake_timeout),
            ..Io::default()
        });
        let key = self.slots.insert(Slot::new(now, fd, tls, io));
        self.handshakes += 1;
        self.ring.poll_read_multi(raw_fd, user_data(KIND_READ, key));
        self.schedule(key);
    }

    /// A session for a connection accepted on the TLS listener, with the configuration
    /// in force (re-read only when a reload changed it). `None` (counted) if rustls
    /// cannot make one.
    pub(super) fn new_tls_session(&mut self) -> Option<Box<TlsSession>> {
        let context = self.tls.as_ref()?;
        let generation = context.generation();
        if self.tls_config.as_ref().is_none_or(|(cached, _)| *cached != generation) {
            self.tls_config = Some(context.current());
        }
        let (_, config) = self.tls_config.as_ref()?;
        match TlsSession::new(config.clone()) {
            Ok(session) => Some(Box::new(session)),
            Err(error) => {
                ShardMetrics::bump(&mut self.metrics.tls_handshake_failures, error.label());
                None
            }
        }
    }
}
