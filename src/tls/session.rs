//! One TLS connection, sans-IO: ciphertext in, plaintext and ciphertext out.
//!
//! [`TlsSession`] wraps rustls' unbuffered server connection. The caller (the shard)
//! owns the read buffer: it puts the bytes of an unfinished record kept from the last
//! read ([`TlsSession::take_partial`]) at the front of its buffer, reads the socket
//! behind them and passes the whole slice to [`TlsSession::handle_ciphertext`], which
//! appends the decrypted application data to the caller's plaintext buffer and any
//! handshake or alert records to the session's output. Outgoing application data goes
//! through [`TlsSession::seal`]; [`TlsSession::poll_transmit`] and
//! [`TlsSession::consume_transmit`] hand the ciphertext to the socket.
//!
//! Memory: the only buffers the session owns are `partial` (a record cut by the end of
//! a read) and `out` (ciphertext the socket has not taken yet). Both are freed as soon
//! as they are empty, so an idle session holds rustls' connection state and nothing
//! else.
#![forbid(unsafe_code)]

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};

/// TLS overhead per record, at most (TLS 1.2 AES-GCM: 5 header + 8 nonce + 16 tag; TLS
/// 1.3: 5 header + 1 content type + 16 tag). An estimate for reserving room before
/// encrypting; rustls says the exact figure when the room is short.
const RECORD_OVERHEAD_BYTES: usize = 32;
/// Largest plaintext fragment rustls puts in one record.
const MAX_FRAGMENT_BYTES: usize = 16 * 1024;
/// States handled in one call before giving up: the rustls state machine returns
/// `BlockedHandshake` or `WriteTraffic` after a handful, so hitting this is a bug.
const MAX_STATES_PER_CALL: usize = 10_000;

/// What a negotiated handshake looks like, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeInfo {
    /// `tls13` or `tls12`.
    pub version: &'static str,
    /// The client resumed an earlier session (ticket or session id).
    pub resumed: bool,
}

/// What one batch of ciphertext produced, besides plaintext and output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Input {
    /// The handshake completed during this call.
    pub handshake_done: Option<HandshakeInfo>,
    /// The peer sent close_notify: nothing more will arrive.
    pub peer_closed: bool,
}

/// A TLS failure of one connection. Each variant is a metric label
/// (`wsgate_tls_handshake_failures_total{reason=...}`) and, during the handshake, an
/// alert sent to the peer where rustls produced one.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionError {
    /// The rustls error.
    pub error: rustls::Error,
}

impl SessionError {
    /// A short label for metrics: the kind of failure, never secret material.
    pub fn label(&self) -> &'static str {
        match &self.error {
            rustls::Error::InvalidMessage(_) => "bad_message",
            rustls::Error::InappropriateMessage { .. } | rustls::Error::InappropriateHandshakeMessage { .. } => {
                "unexpected_message"
            }
            rustls::Error::PeerIncompatible(_) => "incompatible",
            rustls::Error::NoApplicationProtocol => "no_alpn",
            rustls::Error::PeerMisbehaved(_) => "peer_misbehaved",
            rustls::Error::AlertReceived(_) => "alert_received",
            rustls::Error::DecryptError => "decrypt_error",
            _ => "other",
        }
    }
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS: {}", self.error)
    }
}

impl std::error::Error for SessionError {}

/// The server side of one TLS connection.
pub struct TlsSession {
    /// rustls' state: handshake, then the traffic keys and sequence numbers.
    conn: UnbufferedServerConnection,
    /// Ciphertext of a record (or handshake message) cut by the end of a read, kept
    /// until the rest arrives. Empty and unallocated otherwise.
    partial: Vec<u8>,
    /// Ciphertext waiting for the socket. Empty and unallocated when nothing waits.
    out: Vec<u8>,
    /// Bytes at the front of `out` already written.
    out_written: usize,
    /// The handshake has completed (and was reported once).
    established: bool,
    /// close_notify has been queued: nothing may be sealed after it.
    close_sent: bool,
    /// The session failed; only its alert (if any) may still go out.
    failed: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("established", &self.established)
            .field("partial", &self.partial.len())
            .field("out", &(self.out.len() - self.out_written))
            .finish()
    }
}

impl TlsSession {
    /// A session for a freshly accepted connection.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, SessionError> {
        let conn = UnbufferedServerConnection::new(config).map_err(|error| SessionError { error })?;
        Ok(Self {
            conn,
            partial: Vec::new(),
            out: Vec::new(),
            out_written: 0,
            established: false,
            close_sent: false,
            failed: false,
        })
    }

    /// Whether the handshake has completed: application data flows.
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Length of the unfinished record kept from the last read.
    pub fn partial_len(&self) -> usize {
        self.partial.len()
    }

    /// Moves the unfinished record kept from the last read to the front of `buf` and
    /// returns its length; the socket's new bytes go right behind it. `buf` must be at
    /// least [`crate::tls::MIN_READ_BUFFER_BYTES`] long (a record always fits).
    pub fn take_partial(&mut self, buf: &mut [u8]) -> usize {
        let n = self.partial.len();
        assert!(
            n < buf.len(),
            "a partial TLS record ({n} B) must leave room in the read buffer"
        );
        buf[..n].copy_from_slice(&self.partial);
        self.partial = Vec::new();
        n
    }

    /// Handles ciphertext: the front of `incoming` is what [`take_partial`] returned,
    /// then newly read bytes. Application data is appended to `plaintext`; handshake
    /// records and alerts to the session's output ([`poll_transmit`]). Whatever is left
    /// of an unfinished record is kept for the next call. `incoming` is used as scratch
    /// (records are decrypted in place).
    ///
    /// On error the session is failed: its alert, if rustls made one, is in the output,
    /// and the connection should be closed once the output is flushed.
    ///
    /// [`take_partial`]: Self::take_partial
    /// [`poll_transmit`]: Self::poll_transmit
    pub fn handle_ciphertext(&mut self, incoming: &mut [u8], plaintext: &mut Vec<u8>) -> Result<Input, SessionError> {
        let mut result = Input::default();
        if self.failed {
            return Ok(result);
        }
        let mut start = 0;
        for _ in 0..MAX_STATES_PER_CALL {
            let status = self.conn.process_tls_records(&mut incoming[start..]);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(error) => {
                    self.fail();
                    return Err(SessionError { error });
                }
            };
            let mut done = false;
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    let mut broken = None;
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                plaintext.extend_from_slice(record.payload);
                            }
                            Err(error) => {
                                broken = Some(error);
                                break;
                            }
                        }
                    }
                    if let Some(error) = broken {
                        self.fail();
                        return Err(SessionError { error });
                    }
                }
                ConnectionState::ReadEarlyData(mut early) => {
                    // 0-RTT is never enabled (max_early_data_size stays 0: early data
                    // can be replayed); drop anything that claims to be it.
                    while let Some(Ok(record)) = early.next_record() {
                        discard += record.discard;
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    let needed = match encode.encode(&mut []) {
                        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => required_size,
                        Ok(_) | Err(_) => 0,
                    };
                    let at = self.out.len();
                    self.out.resize(at + needed, 0);
                    let written = encode.encode(&mut self.out[at..]).unwrap_or(0);
                    self.out.truncate(at + written);
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // The records are in `out`, which the caller sends exactly once.
                    transmit.done();
                }
                ConnectionState::PeerClosed => {
                    result.peer_closed = true;
                }
                ConnectionState::WriteTraffic(_) | ConnectionState::BlockedHandshake | ConnectionState::Closed => {
                    done = true;
                }
                _ => done = true,
            }
            start += discard;
            if !self.established && !self.conn.is_handshaking() {
                self.established = true;
                result.handshake_done = Some(self.handshake_info());
            }
            if done {
                break;
            }
        }
        self.keep_partial(&incoming[start..]);
        Ok(result)
    }

    fn keep_partial(&mut self, rest: &[u8]) {
        self.partial = if rest.is_empty() { Vec::new() } else { rest.to_vec() };
    }

    fn handshake_info(&self) -> HandshakeInfo {
        let version = match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "tls12",
            _ => "tls13",
        };
        let resumed = matches!(self.conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        HandshakeInfo { version, resumed }
    }

    /// Whether the session failed: input is to be discarded, only the alert (if any)
    /// goes out.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Gives up on the session from outside (the caller found its input unacceptable):
    /// it keeps no input and accepts none.
    pub fn abandon(&mut self) {
        self.failed = true;
        self.partial = Vec::new();
    }

    /// Marks the session failed, drops kept input, and moves rustls' alert (if any) to
    /// the output.
    fn fail(&mut self) {
        self.failed = true;
        self.partial = Vec::new();
        for _ in 0..8 {
            match self.conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let mut record = [0u8; 64];
                    if let Ok(n) = encode.encode(&mut record) {
                        self.out.extend_from_slice(&record[..n]);
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => return,
            }
        }
    }

    /// Encrypts application data into the output. Fails before the handshake has
    /// completed, after close_notify, or when the session failed.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<(), SessionError> {
        if !self.established || self.close_sent || self.failed {
            return Err(SessionError {
                error: rustls::Error::HandshakeNotComplete,
            });
        }
        self.with_write(|out, traffic| {
            let estimate = plaintext.len() + (plaintext.len() / MAX_FRAGMENT_BYTES + 1) * RECORD_OVERHEAD_BYTES;
            let at = out.len();
            out.resize(at + estimate, 0);
            let written = match traffic.encrypt(plaintext, &mut out[at..]) {
                Ok(n) => n,
                Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                    out.resize(at + required_size, 0);
                    traffic.encrypt(plaintext, &mut out[at..]).map_err(encrypt_error)?
                }
                Err(e) => return Err(encrypt_error(e)),
            };
            out.truncate(at + written);
            Ok(())
        })
    }

    /// Queues close_notify (once): the last record of the connection.
    pub fn close(&mut self) {
        if self.close_sent || self.failed || !self.established {
            return;
        }
        let _ = self.with_write(|out, traffic| {
            let mut record = [0u8; 64];
            let n = traffic.queue_close_notify(&mut record).map_err(encrypt_error)?;
            out.extend_from_slice(&record[..n]);
            Ok(())
        });
        self.close_sent = true;
    }

    /// Runs `f` once rustls is in its `WriteTraffic` state, first moving any records
    /// it queued on its own (session tickets, key updates) to the output.
    fn with_write(
        &mut self,
        f: impl FnOnce(
            &mut Vec<u8>,
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
        ) -> Result<(), SessionError>,
    ) -> Result<(), SessionError> {
        for _ in 0..MAX_STATES_PER_CALL {
            match self.conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::WriteTraffic(mut traffic)) => return f(&mut self.out, &mut traffic),
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let needed = match encode.encode(&mut []) {
                        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => required_size,
                        Ok(_) | Err(_) => 0,
                    };
                    let at = self.out.len();
                    self.out.resize(at + needed, 0);
                    let written = encode.encode(&mut self.out[at..]).unwrap_or(0);
                    self.out.truncate(at + written);
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                Ok(other) => {
                    return Err(SessionError {
                        error: rustls::Error::General(format!("cannot write in state {other:?}")),
                    });
                }
                Err(error) => return Err(SessionError { error }),
            }
        }
        unreachable!("rustls never reached WriteTraffic")
    }

    /// Ciphertext waiting for the socket (empty when none).
    pub fn poll_transmit(&self) -> &[u8] {
        &self.out[self.out_written..]
    }

    /// The socket took `n` bytes of [`poll_transmit`](Self::poll_transmit). The output
    /// buffer is freed once it is all out.
    pub fn consume_transmit(&mut self, n: usize) {
        self.out_written += n;
        assert!(self.out_written <= self.out.len(), "consumed more than was pending");
        if self.out_written == self.out.len() {
            self.out = Vec::new();
            self.out_written = 0;
        }
    }

    /// Whether ciphertext waits for the socket.
    pub fn wants_transmit(&self) -> bool {
        self.out_written < self.out.len()
    }

    /// Whether close_notify has been queued.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }
}

fn encrypt_error(e: EncryptError) -> SessionError {
    SessionError {
        error: rustls::Error::General(e.to_string()),
    }
}
