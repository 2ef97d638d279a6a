//! The HTTP upgrade: admission and the 101.
//!
//! In: request bytes of a connection in the `Handshake` phase (gathered across reads
//! when they come in pieces). Out: need more; or a refusal (4xx/5xx written to the
//! connection, closed after the flush); or the 101, the slot made `Open` with its edge
//! tickets and identity, messaging told of the connection, and any frames that came
//! behind the request fed to the frame code. Parsing is `proto::handshake`; the policy
//! (draining → connection cap → limits by address → token) is the sans-IO
//! `server::admission`; the limit by user is the user's owner's, after the 101; this file gathers the bytes and acts on the verdict.
//! With `--demo`, a `GET` of the JavaScript client or the demo page (`crate::client`)
//! is answered 200 where it would get its 404, and closed after the answer like one.

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::time::SystemTime;

use crate::metrics::ShardMetrics;
use crate::msg::protocol::Encoding;
use crate::proto::connection::Connection;
use crate::proto::deflate::{self, Agreement};
use crate::proto::frame::Role;
use crate::proto::handshake;
use crate::server::admission::{Admitted, Gate, Refused, ShardView, Verdict};
use crate::slab::Key;

use super::Shard;
use super::slot::{Out, Phase, sock};

impl Shard {
    /// Handshake bytes arrived in `buf[..n]`.
    pub(super) fn on_request_bytes(&mut self, key: Key, n: usize) {
        let max = self.cfg.limits.max_header_bytes;
        let slot = &mut self.slots[key];
        let fd = &slot.fd;
        let io = slot.io.as_deref_mut().expect("a handshaking slot has io");
        if io.close_after_flush {
            return; // Refused already: ignore what else it sends.
        }
        let from_buf = io.request.is_empty();
        if !from_buf {
            // Keep at most one byte over the limit: enough for the parser to say 431.
            let room = (max + 1).saturating_sub(io.request.len());
            io.request.extend_from_slice(&self.buf[..n.min(room)]);
        }
        let data: &[u8] = if from_buf { &self.buf[..n] } else { &io.request };
        self.scratch.clear();
        let request = match handshake::parse_request(data, &self.cfg.limits, &self.handshake) {
            Ok(Some(request)) => request,
            Ok(None) => {
                if from_buf {
                    io.request.extend_from_slice(&self.buf[..n.min(max + 1)]);
                }
                return;
            }
            Err(error) => {
                // `--demo`: a plain GET of the client or the demo page is answered here,
                // where it would otherwise get its 404.
                let page = (self.cfg.demo && error == handshake::HandshakeError::PathNotFound)
                    .then(|| handshake::request_path(data).and_then(crate::client::page))
                    .flatten();
                match page {
                    Some(page) => {
                        page.write_response(&mut self.scratch);
                        self.answer_and_close(key);
                    }
                    None => {
                        error.write_response(&mut self.scratch);
                        self.refuse(key, error.label());
                    }
                }
                return;
            }
        };
        let gate = Gate {
            edge: &self.edge,
            auth: &self.auth,
        };
        let view = ShardView {
            draining: self.drain.is_some(),
            at_capacity: self.connections >= self.max_connections,
        };
        match gate.admit(&request, view, || peer_ip(fd), self.now, SystemTime::now()) {
            Verdict::Refused(refused) => {
                match refused {
                    Refused::Edge(refusal) => ShardMetrics::bump(&mut self.metrics.limit_hits, refusal.label()),
                    Refused::Unauthorized(error) => ShardMetrics::bump(&mut self.metrics.auth_failures, error.label()),
                    Refused::Draining | Refused::ConnectionLimit => {}
                }
                refused.write_response(&mut self.scratch);
                self.refuse(key, refused.label());
            }
            Verdict::Admitted(admitted) => {
                if admitted.ip_untracked {
                    ShardMetrics::bump(&mut self.metrics.limit_hits, "ip_table_full");
                }
                ShardMetrics::bump(&mut self.metrics.auth_accepted, admitted.identity.carrier.label());
                let deflate = self
                    .compress
                    .is_some()
                    .then(|| deflate::negotiate(request.extensions()))
                    .flatten();
                match deflate {
                    Some(agreed) => request.write_response_with_headers(
                        &mut self.scratch,
                        &[("Sec-WebSocket-Extensions", &agreed.response())],
                    ),
                    None => request.write_response(&mut self.scratch),
                }
                let encoding = Encoding::from_subprotocol(request.selected_protocol()).unwrap_or(Encoding::Json);
                let leftover = data[request.header_len()..].to_vec();
                self.upgrade(key, admitted, encoding, deflate, leftover);
            }
        }
    }

    /// Sends the refusal in `scratch` and closes the connection once it is out.
    fn refuse(&mut self, key: Key, label: &'static str) {
        ShardMetrics::bump(&mut self.metrics.handshake_failures, label);
        self.answer_and_close(key);
    }

    /// Sends the HTTP response in `scratch` and closes the connection once it is out.
    fn answer_and_close(&mut self, key: Key) {
        let response = self.scratch.as_slice().into();
        let close_timeout = self.cfg.limits.close_timeout;
        let io = self.slots[key].io.as_deref_mut().expect("handshaking slot has io");
        io.request = Vec::new();
        io.close_after_flush = true;
        io.deadline = Some(self.now + close_timeout);
        self.enqueue(key, Out::Bytes(response), true);
    }

    /// Sends the 101 in `scratch`, opens the WebSocket, tells messaging, and feeds any
    /// frames that came right behind the request.
    fn upgrade(
        &mut self,
        key: Key,
        admitted: Admitted,
        encoding: Encoding,
        deflate: Option<Agreement>,
        leftover: Vec<u8>,
    ) {
        let response = self.scratch.as_slice().into();
        let slot = &mut self.slots[key];
        slot.ws = Connection::new(Role::Server, self.now);
        if let Some(agreed) = deflate {
            slot.ws.set_deflate(agreed.server_window_bits);
            ShardMetrics::bump(&mut self.metrics.compression, "negotiated");
        }
        slot.phase = Phase::Open;
        slot.ip = admitted.ip;
        slot.tat = 0;
        let io = slot.io.as_deref_mut().expect("handshaking slot has io");
        io.request = Vec::new();
        io.deadline = None;
        self.handshakes -= 1;
        self.connections += 1;
        self.metrics.upgrades += 1;
        self.enqueue(key, Out::Bytes(response), true);
        self.schedule(key);
        if let Some(msg) = self.msg.as_mut() {
            msg.handle_connect(key, &admitted.identity, encoding, self.now);
        }
        if !leftover.is_empty() {
            // Frames sent right behind the request: feed them as if just read.
            self.buf[..leftover.len()].copy_from_slice(&leftover);
            self.on_frame_bytes(key, 0, leftover.len());
        }
    }
}

/// The peer address of a connected socket (`None` if it is already gone).
fn peer_ip(fd: &OwnedFd) -> Option<IpAddr> {
    let addr = sock(fd).peer_addr().ok()?;
    Some(addr.as_socket()?.ip())
}
