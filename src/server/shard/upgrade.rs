//! The HTTP upgrade: admission and the 101.
//!
//! In: request bytes of a connection in the `Handshake` phase (gathered across reads
//! when they come in pieces). Out: need more; or a refusal (4xx/5xx written to the
//! connection, closed after the flush); or the 101, the slot made `Open` with its edge
//! tickets and identity, messaging told of the connection, and any frames that came
//! behind the request fed to the frame code. Order of the checks: parse → draining →
//! connection cap → limits by address → token → limit by user.

use std::net::IpAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::SystemTime;

use crate::auth;
use crate::edge::{ConnRef, IpAdmission, IpTicket, Refusal, UserTicket};
use crate::metrics::ShardMetrics;
use crate::msg::protocol::Encoding;
use crate::proto::connection::Connection;
use crate::proto::frame::Role;
use crate::proto::handshake;
use crate::proto::handshake::Status;
use crate::server::wheel::Entry;

use super::Shard;
use super::slot::{Out, Phase, conn_of};

impl Shard {
    /// Handshake bytes arrived in `buf[..n]`.
    pub(super) fn on_request_bytes(&mut self, entry: Entry, n: usize) {
        let index = entry.slot as usize;
        let max = self.cfg.limits.max_header_bytes;
        let fd = self.slots[index].fd;
        let io = self.slots[index].io.as_deref_mut().expect("a handshaking slot has io");
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
        enum Verdict {
            NeedMore,
            Refuse(&'static str),
            Upgrade {
                leftover: Vec<u8>,
                user: UserTicket,
                ip: IpTicket,
                evict: Option<ConnRef>,
                identity: Box<auth::Identity>,
                encoding: Encoding,
            },
        }
        let conn = ConnRef {
            shard: self.id as u32,
            slot: entry.slot,
            gen_: entry.gen_,
        };
        self.scratch.clear();
        let verdict = match handshake::parse_request(data, &self.cfg.limits, &self.handshake) {
            Ok(None) => Verdict::NeedMore,
            Err(error) => {
                error.write_response(&mut self.scratch);
                Verdict::Refuse(error.label())
            }
            Ok(Some(_)) if self.drain.is_some() => {
                let status = Status::ServiceUnavailable;
                handshake::write_error_response(&mut self.scratch, status, "server draining", &[("Retry-After", "1")]);
                Verdict::Refuse("draining")
            }
            Ok(Some(_)) if self.connections >= self.max_connections => {
                let status = Status::ServiceUnavailable;
                handshake::write_error_response(&mut self.scratch, status, "connection limit", &[("Retry-After", "1")]);
                Verdict::Refuse("connection_limit")
            }
            Ok(Some(request)) => {
                // Edge limits before the token check: a flood from one address must not
                // buy signature verifications.
                // The peer is only looked up when a per-address limit needs it.
                let peer = if self.edge.config().tracks_ips() {
                    peer_ip(fd)
                } else {
                    None
                };
                let client = peer.map(|ip| self.edge.client_ip(ip, request.forwarded_for()));
                let admitted = match client {
                    Some(ip) => self.edge.admit_ip(ip, self.now),
                    None => Ok(IpAdmission {
                        ticket: IpTicket::NONE,
                        untracked: false,
                    }),
                };
                match admitted {
                    Err(refusal) => {
                        refuse_at_edge(&mut self.scratch, &mut self.metrics, refusal);
                        Verdict::Refuse(refusal.label())
                    }
                    Ok(admission) => {
                        if admission.untracked {
                            ShardMetrics::bump(&mut self.metrics.limit_hits, "ip_table_full");
                        }
                        match self.auth.authenticate(&request, SystemTime::now()) {
                            Err(error) => {
                                self.edge.release_ip(admission.ticket);
                                ShardMetrics::bump(&mut self.metrics.auth_failures, error.label());
                                auth::write_unauthorized(&mut self.scratch, error);
                                Verdict::Refuse("unauthorized")
                            }
                            Ok(identity) => {
                                let per_user = if identity.generated {
                                    Ok((UserTicket::NONE, None))
                                } else {
                                    self.edge.admit_user(&identity.user_id, conn)
                                };
                                match per_user {
                                    Err(refusal) => {
                                        self.edge.release_ip(admission.ticket);
                                        refuse_at_edge(&mut self.scratch, &mut self.metrics, refusal);
                                        Verdict::Refuse(refusal.label())
                                    }
                                    Ok((user, evict)) => {
                                        if evict.is_some() {
                                            ShardMetrics::bump(&mut self.metrics.limit_hits, "user_replaced");
                                        }
                                        ShardMetrics::bump(&mut self.metrics.auth_accepted, identity.carrier.label());
                                        request.write_response(&mut self.scratch);
                                        Verdict::Upgrade {
                                            leftover: data[request.header_len()..].to_vec(),
                                            user,
                                            ip: admission.ticket,
                                            evict,
                                            encoding: Encoding::from_subprotocol(request.selected_protocol())
                                                .unwrap_or(Encoding::Json),
                                            identity: Box::new(identity),
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        match verdict {
            Verdict::NeedMore => {
                if from_buf {
                    let io = self.slots[index].io.as_deref_mut().expect("handshaking slot has io");
                    io.request.extend_from_slice(&self.buf[..n.min(max + 1)]);
                }
            }
            Verdict::Refuse(label) => {
                ShardMetrics::bump(&mut self.metrics.handshake_failures, label);
                let response = self.scratch.as_slice().into();
                let close_timeout = self.cfg.limits.close_timeout;
                let io = self.slots[index].io.as_deref_mut().expect("handshaking slot has io");
                io.request = Vec::new();
                io.close_after_flush = true;
                io.deadline = Some(self.now + close_timeout);
                self.enqueue(entry, Out::Bytes(response), true);
            }
            Verdict::Upgrade {
                leftover,
                user,
                ip,
                evict,
                identity,
                encoding,
            } => {
                let response = self.scratch.as_slice().into();
                let slot = &mut self.slots[index];
                slot.ws = Connection::new(Role::Server, self.now);
                slot.phase = Phase::Open;
                slot.user = user;
                slot.ip = ip;
                slot.tat = 0;
                let io = slot.io.as_deref_mut().expect("handshaking slot has io");
                io.request = Vec::new();
                io.deadline = None;
                self.handshakes -= 1;
                self.connections += 1;
                self.metrics.upgrades += 1;
                self.enqueue(entry, Out::Bytes(response), true);
                self.schedule(entry);
                if let Some(victim) = evict {
                    self.evict_anywhere(victim);
                }
                if let Some(msg) = self.msg.as_mut() {
                    msg.handle_connect(conn_of(entry), &identity, encoding, self.now);
                }
                if !leftover.is_empty() {
                    // Frames sent right behind the request: feed them as if just read.
                    self.buf[..leftover.len()].copy_from_slice(&leftover);
                    self.on_frame_bytes(entry, 0, leftover.len());
                }
            }
        }
    }
}

/// The peer address of a connected socket (`None` if it is already gone).
fn peer_ip(fd: RawFd) -> Option<IpAddr> {
    // SAFETY: `fd` is an open socket owned by the calling shard for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let addr = socket2::SockRef::from(&fd).peer_addr().ok()?;
    Some(addr.as_socket()?.ip())
}

/// Writes the 429 for an edge refusal and counts it.
fn refuse_at_edge(out: &mut Vec<u8>, metrics: &mut ShardMetrics, refusal: Refusal) {
    ShardMetrics::bump(&mut metrics.limit_hits, refusal.label());
    let status = Status::TooManyRequests;
    match refusal {
        Refusal::UpgradeRate { retry_after_secs } => {
            let secs = retry_after_secs.to_string();
            handshake::write_error_response(out, status, refusal.reason(), &[("Retry-After", &secs)]);
        }
        Refusal::ConnectionsPerIp | Refusal::ConnectionsPerUser => {
            handshake::write_error_response(out, status, refusal.reason(), &[]);
        }
    }
}
