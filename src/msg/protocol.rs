//! The client protocol, version 1: what clients send and what the gateway answers.
//!
//! Negotiated by WebSocket subprotocol: [`SUBPROTOCOL_JSON`] (`wsgate.v1.json`), one
//! JSON object per text frame. A client that offers no subprotocol is spoken to in the
//! same JSON. [`SUBPROTOCOL_BIN`] (`wsgate.v1.bin`, a compact binary encoding of the same
//! messages) is reserved and not built: [`Encoding::from_subprotocol`] refuses it, so the
//! server does not select it. The message set is the same for both; only this module
//! knows the encoding.
//!
//! # Parsing
//!
//! [`parse`] reads one client frame into a [`ClientMsg`] that borrows from the frame
//! (strings without escapes and the `body` are not copied). Every field is bounded
//! ([`MsgLimits`]); unknown fields are ignored so a newer client can talk to an older
//! server. Two outcomes for bad input ([`ParseError`]):
//!
//! - **Garbage** — a binary frame on the JSON protocol (close 1003), or text that is
//!   not a JSON object with a string `type` (close 1008): the peer does not speak the
//!   protocol, and answering it would only feed a confused or hostile client.
//! - **Invalid** — a JSON object with a bad or unknown `type`, a missing, mistyped or
//!   oversized field: an `error` message with a code ([`ErrorCode`]) and the client's
//!   `id` echoed when it could be read; the connection stays open.
//!
//! # Encoding
//!
//! Server messages are written by the `encode_*` functions straight into a `Vec<u8>`
//! (no intermediate tree); the owner of a key encodes a message once and every
//! recipient shares the bytes through a `SharedFrame`. A `body` is copied verbatim:
//! it was validated as JSON when the client sent it.//!
//! # Why one long file
//!
//! It is the wire protocol: the parser of every client message and the encoder of every
//! server message, side by side so that a field's name, limit and error code are read and
//! changed in one place (the README's protocol tables follow its order).
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{MAX_CLIENT_ID_BYTES, MsgLimits, Position};
use crate::proto::close::CloseCode;

/// The JSON encoding of protocol version 1.
pub const SUBPROTOCOL_JSON: &str = "wsgate.v1.json";
/// Reserved for the binary encoding of version 1; not built yet, never selected.
pub const SUBPROTOCOL_BIN: &str = "wsgate.v1.bin";

/// How messages are encoded on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `wsgate.v1.json`, or no subprotocol: JSON text frames.
    Json,
}

impl Encoding {
    /// The encoding for the subprotocol selected at the upgrade (`None`: none was).
    /// `None` back means the subprotocol is not one we speak (including the reserved
    /// binary one), so the server must not select it.
    pub fn from_subprotocol(selected: Option<&str>) -> Option<Self> {
        match selected {
            None | Some(SUBPROTOCOL_JSON) => Some(Self::Json),
            _ => None,
        }
    }

    /// The subprotocol name, as the welcome message reports it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => SUBPROTOCOL_JSON,
        }
    }
}

/// One message from a client, borrowing from its frame.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMsg<'a> {
    /// `send`: a message to a user's inbox (every connection of theirs, or their
    /// offline queue). Answered with `ack` carrying the inbox sequence number.
    Send {
        /// The recipient's user id.
        to: Cow<'a, str>,
        /// The client's id for this message, echoed in `ack`, `msg` and `receipt`.
        id: Option<ClientId>,
        /// The message itself: any JSON value, passed through unchanged.
        body: Body<'a>,
    },
    /// `join`: become a member of a room (receive its messages from now, or replay
    /// from `since`). Answered with `joined` (or `resync`, then `joined`).
    Join {
        /// The room.
        room: Cow<'a, str>,
        /// Echoed in `joined` or `error`.
        id: Option<ClientId>,
        /// Recover what was missed since this position.
        since: Option<Position>,
        /// Receive join/leave events (member counts in large rooms) for this room.
        presence: bool,
    },
    /// `leave`: stop being a member. Answered with `left`.
    Leave {
        /// The room.
        room: Cow<'a, str>,
        /// Echoed in `left` or `error`.
        id: Option<ClientId>,
    },
    /// `publish`: a message to every member of a room. Answered with `ack` carrying the
    /// room sequence number.
    Publish {
        /// The room.
        room: Cow<'a, str>,
        /// Echoed in `ack` and in `room_msg`.
        id: Option<ClientId>,
        /// Any JSON value, passed through unchanged.
        body: Body<'a>,
        /// Do not deliver it back to the publishing connection.
        exclude_self: bool,
    },
    /// `ack`: the recipient confirms it received inbox message `seq`; the sender gets a
    /// `receipt`.
    Ack {
        /// The inbox sequence number.
        seq: u64,
        /// Echoed in `error` if the ack is refused.
        id: Option<ClientId>,
    },
    /// `resume`: replay the inbox after `since` (after a reconnect). Answered with
    /// `resumed` after the replay, or `resync`.
    Resume {
        /// The last inbox position the client saw.
        since: Position,
        /// Echoed in `resumed`.
        id: Option<ClientId>,
    },
    /// `presence` with `user`: whether the user is online, on how many connections.
    PresenceUser {
        /// The user asked about.
        user: Cow<'a, str>,
        /// Echoed in the answer.
        id: Option<ClientId>,
    },
    /// `presence` with `room`: how many members, and who (small rooms).
    PresenceRoom {
        /// The room asked about.
        room: Cow<'a, str>,
        /// Echoed in the answer.
        id: Option<ClientId>,
    },
    /// `ping`: an application-level liveness check. Browsers cannot see WebSocket
    /// pings, so a client that wants to notice a dead link sends this and expects
    /// `pong` back. Answered by the connection's own shard (no owner, no Redis).
    Ping {
        /// Echoed in `pong`.
        id: Option<ClientId>,
    },
}

/// A message body: any JSON value, validated and bounded, kept as the client wrote it
/// (borrowed from the frame) so it is forwarded without re-serialising.
#[derive(Clone, Copy, Debug)]
pub struct Body<'a>(&'a RawValue);

impl<'a> Body<'a> {
    /// The body's JSON text.
    pub fn get(&self) -> &'a str {
        self.0.get()
    }
}

impl PartialEq for Body<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// A client-chosen id: the JSON text of a string (at most [`MAX_CLIENT_ID_BYTES`]
/// between the quotes) or a non-negative integer, kept as written so it is echoed
/// byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(Box<str>);

impl ClientId {
    /// The id as JSON text (with its quotes if it is a string).
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// Validates a raw JSON value as an id.
    fn from_raw(raw: &RawValue) -> Result<Self, &'static str> {
        let text = raw.get();
        let ok = if text.starts_with('"') {
            // Quotes and escapes included; the limit is on the JSON text, so an id
            // cannot grow when echoed.
            text.len() <= MAX_CLIENT_ID_BYTES + 2
        } else {
            text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit())
        };
        if ok {
            Ok(Self(text.into()))
        } else {
            Err("id must be a string of at most 64 bytes or a non-negative integer")
        }
    }

    /// An id from JSON text the caller vouches for (tests, the backend API).
    pub fn from_json_text(text: &str) -> Self {
        Self(text.into())
    }
}

/// Why a client message was refused, as the `code` of an `error` message. Each is
/// also a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A field is missing, of the wrong type, or not valid for this message.
    BadRequest,
    /// `type` names no message of this protocol version.
    UnknownType,
    /// A field is over its limit (room name, user id, body, id).
    TooLarge,
    /// A user id or room name is empty or holds control characters.
    InvalidName,
    /// The token's claims do not allow this join or publish.
    Forbidden,
    /// The connection is already in `max_rooms_per_connection` rooms.
    TooManyRooms,
    /// The connection is already a member of (or joining) the room.
    AlreadyJoined,
    /// `leave` for a room the connection is not in.
    NotJoined,
    /// The gateway shed the request: a cross-core ring stayed full. Retry later.
    Overloaded,
    /// `ack` for a sequence number not in the inbox history.
    UnknownSeq,
    /// The message store's disk budget is spent: the message was not stored (and not
    /// delivered). Retry later.
    StorageFull,
    /// The message would create a user or room entry beyond `max_owner_entries` on its
    /// owner shard. Retry later.
    OwnerFull,
    /// With `--redis`: the cluster store did not answer (down, restarting, slow), so
    /// the request could not be sequenced or looked up across the fleet. Nothing was
    /// promised; retry later.
    Unavailable,
}

impl ErrorCode {
    /// Every code, for tests and docs.
    pub const ALL: [Self; 13] = [
        Self::BadRequest,
        Self::UnknownType,
        Self::TooLarge,
        Self::InvalidName,
        Self::Forbidden,
        Self::TooManyRooms,
        Self::AlreadyJoined,
        Self::NotJoined,
        Self::Overloaded,
        Self::UnknownSeq,
        Self::StorageFull,
        Self::OwnerFull,
        Self::Unavailable,
    ];

    /// The wire name (snake_case).
    pub fn label(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownType => "unknown_type",
            Self::TooLarge => "too_large",
            Self::InvalidName => "invalid_name",
            Self::Forbidden => "forbidden",
            Self::TooManyRooms => "too_many_rooms",
            Self::AlreadyJoined => "already_joined",
            Self::NotJoined => "not_joined",
            Self::Overloaded => "overloaded",
            Self::UnknownSeq => "unknown_seq",
            Self::StorageFull => "storage_full",
            Self::OwnerFull => "owner_full",
            Self::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A client frame that is not a valid message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not the protocol at all: close the connection with `code` and `reason`.
    Garbage {
        /// 1003 for a binary frame, 1008 for text that is not a JSON object with a
        /// string `type`.
        code: CloseCode,
        /// A short reason for the close frame.
        reason: &'static str,
    },
    /// A protocol message with a problem: answer with an `error` message.
    Invalid {
        /// What is wrong, as a code.
        code: ErrorCode,
        /// The client's id, when one could be read.
        id: Option<ClientId>,
        /// What is wrong, for people.
        detail: String,
    },
}

impl ParseError {
    fn invalid(code: ErrorCode, id: &Option<ClientId>, detail: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            id: id.clone(),
            detail: detail.into(),
        }
    }
}

/// Every field any v1 message may carry, all optional; [`parse`] checks which ones
/// the `type` needs.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Text<'a>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    to: Option<Text<'a>>,
    #[serde(borrow, default)]
    room: Option<Text<'a>>,
    #[serde(borrow, default)]
    user: Option<Text<'a>>,
    // `"body": null` is a body (JSON null), not a missing one.
    #[serde(borrow, default, deserialize_with = "present")]
    body: Option<&'a RawValue>,
    #[serde(default)]
    since: Option<WirePosition>,
    #[serde(default)]
    presence: Option<bool>,
    #[serde(default)]
    exclude_self: Option<bool>,
    #[serde(default)]
    seq: Option<u64>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct WirePosition {
    epoch: u64,
    seq: u64,
}

/// The type and id, read leniently (any JSON value) when the whole message did not
/// parse: a string `type` makes it a protocol message with a bad field (answer, echoing
/// the id); anything else is garbage.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// A string field that borrows from the frame when it has no escapes. (serde borrows a
/// bare `Cow<str>` field on request, but not one inside an `Option`.)
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visit)
    }
}

/// Whether a frame was text or binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A text message (already validated as UTF-8 by the frame layer).
    Text,
    /// A binary message.
    Binary,
}

/// Parses one client message. See the module docs for the two kinds of error.
pub fn parse<'a>(kind: FrameKind, frame: &'a [u8], limits: &MsgLimits) -> Result<ClientMsg<'a>, ParseError> {
    if kind == FrameKind::Binary {
        return Err(ParseError::Garbage {
            code: CloseCode::UNSUPPORTED_DATA,
            reason: "wsgate.v1.json takes text frames",
        });
    }
    let not_json = ParseError::Garbage {
        code: CloseCode::POLICY_VIOLATION,
        reason: "not a wsgate.v1 message",
    };
    let text = std::str::from_utf8(frame).map_err(|_| not_json.clone())?;
    if !text.trim_start().starts_with('{') {
        return Err(not_json);
    }
    let wire: Wire<'a> = match serde_json::from_str(text) {
        Ok(wire) => wire,
        Err(e) => {
            use serde_json::error::Category;
            return Err(match e.classify() {
                Category::Syntax | Category::Eof | Category::Io => not_json,
                Category::Data => {
                    // A JSON object with a field of the wrong type or a duplicate field,
                    // or without a string `type`. A missing or mistyped `type` is
                    // garbage: nothing tells us what the client meant.
                    match serde_json::from_str::<Probe<'_>>(text) {
                        Ok(Probe { kind: Some(kind), id }) if kind.get().starts_with('"') => ParseError::Invalid {
                            code: ErrorCode::BadRequest,
                            id: id.and_then(|raw| ClientId::from_raw(raw).ok()),
                            detail: e.to_string(),
                        },
                        _ => not_json,
                    }
                }
            });
        }
    };
    let id = match wire.id {
        None => None,
        Some(raw) => {
            Some(ClientId::from_raw(raw).map_err(|detail| ParseError::invalid(ErrorCode::TooLarge, &None, detail))?)
        }
    };
    let need = |field: Option<Text<'a>>, name: &str, max: usize| -> Result<Cow<'a, str>, ParseError> {
        let value = field
            .map(|t| t.0)
            .ok_or_else(|| ParseError::invalid(ErrorCode::BadRequest, &id, format!("{name} is missing")))?;
        check_name(&value, name, max).map_err(|(code, detail)| ParseError::invalid(code, &id, detail))?;
        Ok(value)
    };
    let body = |raw: Option<&'a RawValue>| -> Result<Body<'a>, ParseError> {
        let raw = raw.ok_or_else(|| ParseError::invalid(ErrorCode::BadRequest, &id, "body is missing"))?;
        if raw.get().len() > limits.max_payload_bytes {
            return Err(ParseError::invalid(
                ErrorCode::TooLarge,
                &id,
                format!("body is over {} bytes", limits.max_payload_bytes),
            ));
        }
        Ok(Body(raw))
    };
    let since = wire.since.map(|p| Position {
        epoch: p.epoch,
        seq: p.seq,
    });
    let msg = match &*wire.kind.0 {
        "send" => ClientMsg::Send {
            to: need(wire.to, "to", limits.max_user_id_bytes)?,
            body: body(wire.body)?,
            id,
        },
        "join" => ClientMsg::Join {
            room: need(wire.room, "room", limits.max_room_name_bytes)?,
            since,
            presence: wire.presence.unwrap_or(false),
            id,
        },
        "leave" => ClientMsg::Leave {
            room: need(wire.room, "room", limits.max_room_name_bytes)?,
            id,
        },
        "publish" => ClientMsg::Publish {
            room: need(wire.room, "room", limits.max_room_name_bytes)?,
            body: body(wire.body)?,
            exclude_self: wire.exclude_self.unwrap_or(false),
            id,
        },
        "ack" => ClientMsg::Ack {
            seq: wire.seq.filter(|&s| s > 0).ok_or_else(|| {
                ParseError::invalid(ErrorCode::BadRequest, &id, "seq (a positive integer) is missing")
            })?,
            id,
        },
        "resume" => ClientMsg::Resume {
            since: since.ok_or_else(|| ParseError::invalid(ErrorCode::BadRequest, &id, "since is missing"))?,
            id,
        },
        "presence" => match (wire.user, wire.room) {
            (Some(user), None) => ClientMsg::PresenceUser {
                user: need(Some(user), "user", limits.max_user_id_bytes)?,
                id,
            },
            (None, Some(room)) => ClientMsg::PresenceRoom {
                room: need(Some(room), "room", limits.max_room_name_bytes)?,
                id,
            },
            _ => {
                return Err(ParseError::invalid(
                    ErrorCode::BadRequest,
                    &id,
                    "presence takes exactly one of user and room",
                ));
            }
        },
        "ping" => ClientMsg::Ping { id },
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(ParseError::invalid(
                ErrorCode::UnknownType,
                &id,
                format!("unknown type {shown:?}"),
            ));
        }
    };
    Ok(msg)
}

/// Checks a user id or room name (`name` is the field, for the message): at most `max`
/// bytes, not empty, no control characters. Also used by the backend API.
pub fn check_name(value: &str, name: &str, max: usize) -> Result<(), (ErrorCode, String)> {
    if value.len() > max {
        return Err((ErrorCode::TooLarge, format!("{name} is over {max} bytes")));
    }
    if value.is_empty() || value.chars().any(char::is_control) {
        return Err((
            ErrorCode::InvalidName,
            format!("{name} must be non-empty, without control characters"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// Writes `s` as a JSON string, quotes included.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A JSON object being written: `{"type":"…"` first, then fields, then `}`.
struct Obj<'o> {
    out: &'o mut Vec<u8>,
}

impl<'o> Obj<'o> {
    fn new(out: &'o mut Vec<u8>, kind: &str) -> Self {
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.push(b'"');
        Self { out }
    }

    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        self.out.extend_from_slice(b",\"");
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    fn str(&mut self, key: &str, value: &str) -> &mut Self {
        write_json_str(self.key(key), value);
        self
    }

    fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        push_u64(self.key(key), value);
        self
    }

    fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key).extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.str(key, v),
            None => self.raw(key, "null"),
        }
    }

    fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        self.key(key).extend_from_slice(json.as_bytes());
        self
    }

    fn id(&mut self, id: Option<&ClientId>) -> &mut Self {
        if let Some(id) = id {
            self.raw("id", id.as_json());
        }
        self
    }

    fn position(&mut self, key: &str, p: Position) -> &mut Self {
        let out = self.key(key);
        out.extend_from_slice(b"{\"epoch\":");
        push_u64(out, p.epoch);
        out.extend_from_slice(b",\"seq\":");
        push_u64(out, p.seq);
        out.push(b'}');
        self
    }

    fn end(&mut self) {
        self.out.push(b'}');
    }
}

/// Appends the decimal digits of `n`.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    out.extend_from_slice(itoa(&mut buf, n));
}

/// Decimal digits of `n` in `buf`, without allocating.
fn itoa(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// `welcome`: the first message on a connection, once the user's owner registered it.
pub fn encode_welcome(out: &mut Vec<u8>, encoding: Encoding, user: &str, inbox: Position, limits: &MsgLimits) {
    let mut o = Obj::new(out, "welcome");
    o.str("protocol", encoding.name())
        .str("user", user)
        .position("inbox", inbox);
    let out = o.key("limits");
    out.extend_from_slice(b"{\"max_payload_bytes\":");
    push_u64(out, limits.max_payload_bytes as u64);
    out.extend_from_slice(b",\"max_rooms\":");
    push_u64(out, limits.max_rooms_per_connection as u64);
    out.extend_from_slice(b",\"max_room_name_bytes\":");
    push_u64(out, limits.max_room_name_bytes as u64);
    out.push(b'}');
    o.end();
}

/// `msg`: a message in the recipient's inbox.
/// `from` is `None` for a message from the backend API, written `"from": null`.
pub fn encode_msg(out: &mut Vec<u8>, seq: u64, from: Option<&str>, id: Option<&ClientId>, body: &str) {
    Obj::new(out, "msg")
        .u64("seq", seq)
        .opt_str("from", from)
        .id(id)
        .raw("body", body)
        .end();
}

/// `room_msg`: a message published to a room.
/// `from` is `None` for a publish from the backend API, written `"from": null`.
pub fn encode_room_msg(out: &mut Vec<u8>, room: &str, seq: u64, from: Option<&str>, id: Option<&ClientId>, body: &str) {
    Obj::new(out, "room_msg")
        .str("room", room)
        .u64("seq", seq)
        .opt_str("from", from)
        .id(id)
        .raw("body", body)
        .end();
}

/// What an `ack` acknowledges.
#[derive(Clone, Copy, Debug)]
pub enum AckOf<'a> {
    /// A `send`: the message's place in the recipient's inbox.
    Inbox {
        /// The recipient.
        to: &'a str,
    },
    /// A `publish`: the message's place in the room.
    Room {
        /// The room.
        room: &'a str,
    },
}

/// `ack`: the gateway accepted a `send` or `publish` at this position.
pub fn encode_ack(out: &mut Vec<u8>, id: Option<&ClientId>, of: AckOf<'_>, at: Position) {
    let mut o = Obj::new(out, "ack");
    o.id(id);
    match of {
        AckOf::Inbox { to } => o.str("to", to),
        AckOf::Room { room } => o.str("room", room),
    };
    o.u64("seq", at.seq).u64("epoch", at.epoch).end();
}

/// `receipt`: `by` (the recipient) acknowledged inbox message `seq`, the sender's `id`.
pub fn encode_receipt(out: &mut Vec<u8>, by: &str, seq: u64, id: Option<&ClientId>) {
    Obj::new(out, "receipt").str("by", by).u64("seq", seq).id(id).end();
}

/// `error`: a request was refused.
pub fn encode_error(out: &mut Vec<u8>, code: ErrorCode, text: &str, id: Option<&ClientId>) {
    Obj::new(out, "error")
        .id(id)
        .str("code", code.label())
        .str("text", text)
        .end();
}

/// `joined`: the connection is a member of `room`; messages after `at.seq` follow
/// (`replayed` of them were replayed just before this).
pub fn encode_joined(out: &mut Vec<u8>, id: Option<&ClientId>, room: &str, at: Position, replayed: u64) {
    Obj::new(out, "joined")
        .id(id)
        .str("room", room)
        .position("at", at)
        .u64("replayed", replayed)
        .end();
}

/// `left`: the connection is no longer a member of `room`.
pub fn encode_left(out: &mut Vec<u8>, id: Option<&ClientId>, room: &str) {
    Obj::new(out, "left").id(id).str("room", room).end();
}

/// `resumed`: the inbox replay is complete up to `at`.
pub fn encode_resumed(out: &mut Vec<u8>, id: Option<&ClientId>, at: Position, replayed: u64) {
    Obj::new(out, "resumed")
        .id(id)
        .position("at", at)
        .u64("replayed", replayed)
        .end();
}

/// `pong`: the answer to a `ping`, with its id.
pub fn encode_pong(out: &mut Vec<u8>, id: Option<&ClientId>) {
    Obj::new(out, "pong").id(id).end();
}

/// Why a client must resync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResyncReason {
    /// The log was lost and restarted (a restart, or an idle log forgotten): the epoch
    /// the client holds is not the current one.
    EpochChanged,
    /// The messages after the client's position are no longer all in history.
    TooOld,
    /// The client's position is ahead of the log (it cannot have seen that).
    Ahead,
}

impl ResyncReason {
    /// The wire name.
    pub fn label(self) -> &'static str {
        match self {
            Self::EpochChanged => "epoch_changed",
            Self::TooOld => "too_old",
            Self::Ahead => "ahead",
        }
    }
}

/// `resync`: what the client missed cannot be replayed; it must fetch state from the
/// backend and continue from `current`.
pub fn encode_resync(out: &mut Vec<u8>, room: Option<&str>, current: Position, reason: ResyncReason) {
    let mut o = Obj::new(out, "resync");
    match room {
        Some(room) => o.str("room", room),
        None => o.str("scope", "inbox"),
    };
    o.position("current", current).str("reason", reason.label()).end();
}

/// `presence` answer about a user.
pub fn encode_presence_user(out: &mut Vec<u8>, id: Option<&ClientId>, user: &str, connections: u64) {
    Obj::new(out, "presence")
        .id(id)
        .str("user", user)
        .bool("online", connections > 0)
        .u64("connections", connections)
        .end();
}

/// `presence` answer about a room: member (user) count, connection count, and the
/// members when the room is small enough (`members_list`).
pub fn encode_presence_room<'m>(
    out: &mut Vec<u8>,
    id: Option<&ClientId>,
    room: &str,
    members: u64,
    connections: u64,
    members_list: Option<impl Iterator<Item = &'m str>>,
) {
    let mut o = Obj::new(out, "presence");
    o.id(id)
        .str("room", room)
        .u64("members", members)
        .u64("connections", connections);
    if let Some(list) = members_list {
        let out = o.key("users");
        out.push(b'[');
        for (i, user) in list.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_str(out, user);
        }
        out.push(b']');
    }
    o.end();
}

/// A room presence event: `user` joined or left (small rooms).
pub fn encode_presence_event(out: &mut Vec<u8>, room: &str, joined: bool, user: &str, members: u64) {
    Obj::new(out, "presence")
        .str("room", room)
        .str("event", if joined { "join" } else { "leave" })
        .str("user", user)
        .u64("members", members)
        .end();
}

/// A room presence event for large rooms: the member count changed.
pub fn encode_presence_count(out: &mut Vec<u8>, room: &str, members: u64) {
    Obj::new(out, "presence")
        .str("room", room)
        .str("event", "count")
        .u64("members", members)
        .end();
}

/// Fuzz entry point (and property-test body): any bytes as a text or binary frame.
/// Asserts that parsing never panics, that garbage closes with 1003 or 1008, that an
/// accepted message respects every limit, and that an echoed id is valid JSON.
#[doc(hidden)]
pub fn fuzz_parse(data: &[u8]) {
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let limits = MsgLimits {
        max_payload_bytes: 64,
        max_room_name_bytes: 16,
        max_user_id_bytes: 16,
        ..MsgLimits::default()
    };
    let kind = if selector & 1 == 0 {
        FrameKind::Text
    } else {
        FrameKind::Binary
    };
    match parse(kind, frame, &limits) {
        Ok(msg) => {
            assert_eq!(kind, FrameKind::Text);
            let (names, body, id): (Vec<&str>, Option<&Body<'_>>, Option<&ClientId>) = match &msg {
                ClientMsg::Send { to, id, body } => (vec![to], Some(body), id.as_ref()),
                ClientMsg::Join { room, id, .. } | ClientMsg::Leave { room, id } => (vec![room], None, id.as_ref()),
                ClientMsg::Publish { room, id, body, .. } => (vec![room], Some(body), id.as_ref()),
                ClientMsg::Ack { id, seq } => {
                    assert!(*seq > 0);
                    (vec![], None, id.as_ref())
                }
                ClientMsg::Resume { id, .. } => (vec![], None, id.as_ref()),
                ClientMsg::PresenceUser { user, id } => (vec![user], None, id.as_ref()),
                ClientMsg::PresenceRoom { room, id } => (vec![room], None, id.as_ref()),
                ClientMsg::Ping { id } => (vec![], None, id.as_ref()),
            };
            for name in names {
                assert!(!name.is_empty() && name.len() <= 16 && !name.chars().any(char::is_control));
            }
            if let Some(body) = body {
                assert!(body.get().len() <= 64);
            }
            if let Some(id) = id {
                serde_json::from_str::<serde_json::Value>(id.as_json()).expect("id is JSON");
            }
        }
        Err(ParseError::Garbage { code, .. }) => {
            assert!(code == CloseCode::UNSUPPORTED_DATA || code == CloseCode::POLICY_VIOLATION);
            assert_eq!(code == CloseCode::UNSUPPORTED_DATA, kind == FrameKind::Binary);
        }
        Err(ParseError::Invalid { id, detail, .. }) => {
            assert!(!detail.is_empty());
            if let Some(id) = id {
                serde_json::from_str::<serde_json::Value>(id.as_json()).expect("id is JSON");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn limits() -> MsgLimits {
        MsgLimits::default()
    }

    fn p(text: &str) -> Result<ClientMsg<'_>, ParseError> {
        parse(FrameKind::Text, text.as_bytes(), &limits())
    }

    fn code_of(text: &str) -> ErrorCode {
        match p(text) {
            Err(ParseError::Invalid { code, .. }) => code,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn is_garbage(text: &str) -> bool {
        matches!(p(text), Err(ParseError::Garbage { code, .. }) if code == CloseCode::POLICY_VIOLATION)
    }

    #[test]
    fn parses_every_message_type() {
        match p(r#"{"type":"send","to":"bob","id":"m1","body":{"text":"hi"}}"#).unwrap() {
            ClientMsg::Send { to, id, body } => {
                assert_eq!(to, "bob");
                assert!(matches!(to, Cow::Borrowed(_)), "no escapes: borrowed");
                assert_eq!(id.unwrap().as_json(), "\"m1\"");
                assert_eq!(body.get(), r#"{"text":"hi"}"#);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            p(r#"{"type":"join","room":"r","since":{"epoch":7,"seq":3},"presence":true,"id":5}"#).unwrap(),
            ClientMsg::Join {
                room: "r".into(),
                id: Some(ClientId::from_json_text("5")),
                since: Some(Position { epoch: 7, seq: 3 }),
                presence: true
            }
        );
        assert_eq!(
            p(r#"{"type":"join","room":"r"}"#).unwrap(),
            ClientMsg::Join {
                room: "r".into(),
                id: None,
                since: None,
                presence: false
            }
        );
        assert!(matches!(
            p(r#"{"type":"leave","room":"r"}"#).unwrap(),
            ClientMsg::Leave { .. }
        ));
        assert!(matches!(
            p(r#"{"type":"publish","room":"r","body":"x","exclude_self":true}"#).unwrap(),
            ClientMsg::Publish { exclude_self: true, .. }
        ));
        assert_eq!(
            p(r#"{"type":"ack","seq":9}"#).unwrap(),
            ClientMsg::Ack { seq: 9, id: None }
        );
        assert!(matches!(
            p(r#"{"type":"resume","since":{"epoch":1,"seq":0}}"#).unwrap(),
            ClientMsg::Resume { .. }
        ));
        assert!(matches!(
            p(r#"{"type":"presence","user":"bob"}"#).unwrap(),
            ClientMsg::PresenceUser { .. }
        ));
        assert!(matches!(
            p(r#"{"type":"presence","room":"r"}"#).unwrap(),
            ClientMsg::PresenceRoom { .. }
        ));
        // Unknown fields are ignored (forward compatibility); escaped names are owned.
        match p(r#"{"type":"send","to":"b\u006fb","body":1,"future":[1,2]}"#).unwrap() {
            ClientMsg::Send { to, .. } => assert_eq!(to, "bob"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_closes_and_bad_fields_answer() {
        for garbage in [
            "",
            "hello",
            "[1,2]",
            "\"send\"",
            "{",
            r#"{"type":"send","to":"bob""#,
            r#"{"to":"bob"}"#,
            r#"{"type":5}"#,
            "{} trailing",
        ] {
            assert!(is_garbage(garbage), "{garbage:?}: {:?}", p(garbage));
        }
        assert_eq!(
            parse(FrameKind::Binary, b"{}", &limits()).unwrap_err(),
            ParseError::Garbage {
                code: CloseCode::UNSUPPORTED_DATA,
                reason: "wsgate.v1.json takes text frames"
            }
        );
        assert_eq!(code_of(r#"{"type":"dance","id":"d"}"#), ErrorCode::UnknownType);
        assert_eq!(code_of(r#"{"type":"send","body":1}"#), ErrorCode::BadRequest);
        assert_eq!(code_of(r#"{"type":"send","to":"bob"}"#), ErrorCode::BadRequest);
        assert_eq!(code_of(r#"{"type":"send","to":7,"body":1}"#), ErrorCode::BadRequest);
        assert_eq!(code_of(r#"{"type":"send","to":"","body":1}"#), ErrorCode::InvalidName);
        assert_eq!(code_of(r#"{"type":"join","room":"a\u0001"}"#), ErrorCode::InvalidName);
        assert_eq!(
            code_of(&format!(r#"{{"type":"join","room":"{}"}}"#, "r".repeat(129))),
            ErrorCode::TooLarge
        );
        assert_eq!(
            code_of(&format!(
                r#"{{"type":"send","to":"b","body":"{}"}}"#,
                "x".repeat(64 * 1024)
            )),
            ErrorCode::TooLarge
        );
        assert_eq!(
            code_of(&format!(r#"{{"type":"ack","seq":1,"id":"{}"}}"#, "i".repeat(65))),
            ErrorCode::TooLarge
        );
        assert_eq!(code_of(r#"{"type":"ack","seq":1,"id":-1}"#), ErrorCode::TooLarge);
        assert_eq!(code_of(r#"{"type":"ack"}"#), ErrorCode::BadRequest);
        assert_eq!(code_of(r#"{"type":"ack","seq":0}"#), ErrorCode::BadRequest);
        assert_eq!(code_of(r#"{"type":"resume"}"#), ErrorCode::BadRequest);
        assert_eq!(code_of(r#"{"type":"presence"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code_of(r#"{"type":"presence","user":"a","room":"b"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code_of(r#"{"type":"send","to":"a","to":"b","body":1}"#),
            ErrorCode::BadRequest
        );
        // The id is echoed even when another field is what broke the message.
        match p(r#"{"type":"join","room":7,"id":"j1"}"#) {
            Err(ParseError::Invalid { code, id, .. }) => {
                assert_eq!(code, ErrorCode::BadRequest);
                assert_eq!(id.unwrap().as_json(), "\"j1\"");
            }
            other => panic!("{other:?}"),
        }
        match p(r#"{"type":"nope","id":"x"}"#) {
            Err(ParseError::Invalid { id, detail, .. }) => {
                assert_eq!(id.unwrap().as_json(), "\"x\"");
                assert!(detail.contains("nope"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ping_is_answered_with_its_id_byte_for_byte() {
        // A string id, an integer id, none; unknown fields are ignored, as on every type.
        for (text, id) in [
            (r#"{"type":"ping","id":"p-\u0031"}"#, Some(r#""p-\u0031""#)),
            (
                r#"{"type":"ping","id":18446744073709551615}"#,
                Some("18446744073709551615"),
            ),
            (r#"{"type":"ping"}"#, None),
            (r#"{"type":"ping","sent_at":[1,2],"id":3}"#, Some("3")),
        ] {
            match p(text) {
                Ok(ClientMsg::Ping { id: got }) => {
                    assert_eq!(got.as_ref().map(ClientId::as_json), id, "{text}");
                    let mut out = Vec::new();
                    encode_pong(&mut out, got.as_ref());
                    let expected = match id {
                        Some(id) => format!(r#"{{"type":"pong","id":{id}}}"#),
                        None => r#"{"type":"pong"}"#.to_owned(),
                    };
                    assert_eq!(String::from_utf8(out).unwrap(), expected);
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // A bad id is refused like on any request, and `Ping` is not `ping`.
        assert_eq!(
            code_of(&format!(r#"{{"type":"ping","id":"{}"}}"#, "i".repeat(65))),
            ErrorCode::TooLarge
        );
        assert_eq!(code_of(r#"{"type":"ping","id":[1]}"#), ErrorCode::TooLarge);
        assert_eq!(code_of(r#"{"type":"Ping","id":1}"#), ErrorCode::UnknownType);
        assert!(is_garbage(r#"{"type":"ping""#));
    }

    fn parse_json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
    }

    #[test]
    fn encoders_write_valid_json() {
        let id = ClientId::from_json_text("\"m\\\"1\"");
        let mut out = Vec::new();
        encode_msg(&mut out, 5, Some("al\"ice\n\u{1}"), Some(&id), r#"{"a":[1,2]}"#);
        assert_eq!(
            parse_json(&out),
            json!({"type":"msg","seq":5,"from":"al\"ice\n\u{1}","id":"m\"1","body":{"a":[1,2]}})
        );
        let at = Position { epoch: 9, seq: 3 };
        type Encode<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;
        let cases: Vec<(Encode<'_>, Value)> = vec![
            (
                Box::new(|o| encode_room_msg(o, "r", 3, Some("bob"), None, "true")),
                json!({"type":"room_msg","room":"r","seq":3,"from":"bob","body":true}),
            ),
            (
                Box::new(|o| encode_ack(o, None, AckOf::Inbox { to: "bob" }, at)),
                json!({"type":"ack","to":"bob","seq":3,"epoch":9}),
            ),
            (
                Box::new(|o| encode_ack(o, Some(&ClientId::from_json_text("7")), AckOf::Room { room: "r" }, at)),
                json!({"type":"ack","id":7,"room":"r","seq":3,"epoch":9}),
            ),
            (
                Box::new(|o| encode_receipt(o, "bob", 3, None)),
                json!({"type":"receipt","by":"bob","seq":3}),
            ),
            (
                Box::new(|o| encode_error(o, ErrorCode::Forbidden, "no", None)),
                json!({"type":"error","code":"forbidden","text":"no"}),
            ),
            (
                Box::new(|o| encode_joined(o, None, "r", at, 2)),
                json!({"type":"joined","room":"r","at":{"epoch":9,"seq":3},"replayed":2}),
            ),
            (
                Box::new(|o| encode_left(o, None, "r")),
                json!({"type":"left","room":"r"}),
            ),
            (
                Box::new(|o| encode_resumed(o, None, at, 0)),
                json!({"type":"resumed","at":{"epoch":9,"seq":3},"replayed":0}),
            ),
            (
                Box::new(|o| encode_resync(o, None, at, ResyncReason::TooOld)),
                json!({"type":"resync","scope":"inbox","current":{"epoch":9,"seq":3},"reason":"too_old"}),
            ),
            (
                Box::new(|o| encode_resync(o, Some("r"), at, ResyncReason::EpochChanged)),
                json!({"type":"resync","room":"r","current":{"epoch":9,"seq":3},"reason":"epoch_changed"}),
            ),
            (
                Box::new(|o| encode_presence_user(o, None, "bob", 2)),
                json!({"type":"presence","user":"bob","online":true,"connections":2}),
            ),
            (
                Box::new(|o| encode_presence_room(o, None, "r", 2, 3, Some(["a", "b"].into_iter()))),
                json!({"type":"presence","room":"r","members":2,"connections":3,"users":["a","b"]}),
            ),
            (
                Box::new(|o| encode_presence_room(o, None, "r", 2, 3, None::<std::iter::Empty<&str>>)),
                json!({"type":"presence","room":"r","members":2,"connections":3}),
            ),
            (
                Box::new(|o| encode_presence_event(o, "r", false, "bob", 1)),
                json!({"type":"presence","room":"r","event":"leave","user":"bob","members":1}),
            ),
            (
                Box::new(|o| encode_pong(o, Some(&ClientId::from_json_text("\"p-1\"")))),
                json!({"type":"pong","id":"p-1"}),
            ),
            (Box::new(|o| encode_pong(o, None)), json!({"type":"pong"})),
            (
                Box::new(|o| encode_presence_count(o, "r", 1000)),
                json!({"type":"presence","room":"r","event":"count","members":1000}),
            ),
            (
                Box::new(|o| encode_welcome(o, Encoding::Json, "bob", at, &MsgLimits::default())),
                json!({"type":"welcome","protocol":"wsgate.v1.json","user":"bob","inbox":{"epoch":9,"seq":3},
                       "limits":{"max_payload_bytes":65536,"max_rooms":64,"max_room_name_bytes":128}}),
            ),
        ];
        for (encode, expected) in cases {
            let mut out = Vec::new();
            encode(&mut out);
            assert_eq!(parse_json(&out), expected);
        }
        let mut buf = [0; 20];
        assert_eq!(itoa(&mut buf, u64::MAX), b"18446744073709551615");
        assert_eq!(itoa(&mut buf, 0), b"0");
    }

    #[test]
    fn subprotocols() {
        assert_eq!(Encoding::from_subprotocol(None), Some(Encoding::Json));
        assert_eq!(Encoding::from_subprotocol(Some("wsgate.v1.json")), Some(Encoding::Json));
        assert_eq!(
            Encoding::from_subprotocol(Some(SUBPROTOCOL_BIN)),
            None,
            "reserved, not built"
        );
        assert_eq!(Encoding::from_subprotocol(Some("chat")), None);
        assert_eq!(ErrorCode::ALL.len(), 13);
    }

    /// Valid messages of every type, as mutation seeds.
    const SEEDS: &[&str] = &[
        r#"{"type":"send","to":"bob","id":"m1","body":{"text":"hi"}}"#,
        r#"{"type":"join","room":"r","since":{"epoch":7,"seq":3},"presence":true,"id":5}"#,
        r#"{"type":"leave","room":"r","id":"l"}"#,
        r#"{"type":"publish","room":"r","body":[1,"x"],"exclude_self":true}"#,
        r#"{"type":"ack","seq":9}"#,
        r#"{"type":"resume","since":{"epoch":1,"seq":0}}"#,
        r#"{"type":"presence","user":"bob"}"#,
        r#"{"type":"presence","room":"r","id":"q"}"#,
        r#"{"type":"ping","id":"p-1"}"#,
    ];

    #[test]
    fn every_truncation_of_valid_messages_is_handled() {
        for seed in SEEDS {
            for cut in 0..seed.len() {
                let mut data = vec![0u8];
                data.extend_from_slice(&seed.as_bytes()[..cut]);
                fuzz_parse(&data);
                // A strict prefix of an object is never a valid message.
                assert!(p(&seed[..cut]).is_err(), "{:?}", &seed[..cut]);
            }
            assert!(p(seed).is_ok(), "{seed}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 4000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            fuzz_parse(&data);
        }

        #[test]
        fn mutated_valid_messages_never_panic(
            seed in 0..SEEDS.len(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
        ) {
            let mut bytes = SEEDS[seed].as_bytes().to_vec();
            for (at, byte, op) in edits {
                let at = at % (bytes.len() + 1);
                match op {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ if at < bytes.len() => { bytes.remove(at); }
                    _ => {}
                }
            }
            let mut data = vec![0u8];
            data.extend_from_slice(&bytes);
            fuzz_parse(&data);
        }
    }
}
