//! What the bench reads from and writes to a gateway speaking `wsgate.v1.json`.
//!
//! A fan-out subscriber receives one `room_msg` per publish, so reading them must cost
//! little: [`read_server`] deserializes the top-level object with serde into borrowed
//! fields (raw JSON text for `type` and `code`, lenient integers for `seq` and `id`),
//! skipping every other member, and reads the bench's own `"t"` (send time, ns) and
//! `"n"` (publish number) from the top level of `body`. For messages like the server's
//! (no escapes in the fields read, no nested values skipped) nothing is allocated; a
//! test counts it. A frame that is not a JSON object with a string `type` is
//! [`Incoming::Bad`]. Because keys are matched only at the top level (and `t`/`n` only
//! at the top level of `body`), a room name or user id containing `"t":` cannot fool
//! it.
//!
//! The request frames are written here too ([`write_publish`], [`write_send`],
//! [`write_join`]).
#![forbid(unsafe_code)]

use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A server message, as far as the bench cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// `welcome`: the connection is registered; requests may follow.
    Welcome,
    /// `joined`: member of the room from `seq` on (messages after it follow).
    Joined {
        /// `at.seq`.
        seq: Option<u64>,
    },
    /// `room_msg`: `seq` in the room, and the bench's body fields when present.
    RoomMsg {
        /// The room sequence number.
        seq: Option<u64>,
        /// `body.t`: send time, ns since the bench's epoch.
        t: Option<u64>,
        /// `body.n`: the publish number.
        n: Option<u64>,
    },
    /// `ack` of a publish or send: the client's `id` (an integer) and the `seq`.
    Ack {
        /// `id` when it is an integer.
        id: Option<u64>,
        /// `seq`.
        seq: Option<u64>,
    },
    /// `msg`: an inbox message, with the bench's body fields when present.
    Msg {
        /// The inbox sequence number.
        seq: Option<u64>,
        /// `body.t`.
        t: Option<u64>,
        /// `body.n`.
        n: Option<u64>,
    },
    /// `error` with its `code`.
    Error {
        /// The error code (`forbidden`, `overloaded`, ...), raw JSON string content.
        code: &'a str,
    },
    /// Any other well-formed message, by `type`.
    Other(&'a str),
    /// Not a JSON object with a string `type`.
    Bad,
}

/// Reads one text frame from the server.
pub fn read_server(frame: &[u8]) -> Incoming<'_> {
    let Some(msg) = object::<ServerMsg<'_>>(frame) else {
        return Incoming::Bad;
    };
    let Some(kind) = string_content(msg.kind) else {
        return Incoming::Bad;
    };
    let (seq, id) = (msg.seq.int, msg.id.int);
    match kind {
        "room_msg" => Incoming::RoomMsg {
            seq,
            t: msg.body.t,
            n: msg.body.n,
        },
        "msg" => Incoming::Msg {
            seq,
            t: msg.body.t,
            n: msg.body.n,
        },
        "ack" => Incoming::Ack { id, seq },
        "welcome" => Incoming::Welcome,
        "joined" => Incoming::Joined { seq: msg.at.seq },
        "error" => Incoming::Error {
            code: msg.code.and_then(string_content).unwrap_or("unknown"),
        },
        other => Incoming::Other(other),
    }
}

/// The top-level members the bench reads; serde skips the others.
#[derive(Deserialize)]
struct ServerMsg<'a> {
    /// Raw, so that a `type` with escapes is still borrowed (and compared as written).
    #[serde(rename = "type", borrow)]
    kind: &'a RawValue,
    #[serde(default)]
    seq: Lenient,
    #[serde(default)]
    id: Lenient,
    #[serde(borrow, default)]
    code: Option<&'a RawValue>,
    /// `t` and `n` of a `room_msg` or `msg`.
    #[serde(default)]
    body: Lenient,
    /// `seq` of a `joined`.
    #[serde(default)]
    at: Lenient,
}

/// `text` as `T` when it is a JSON object. (serde's derive would also read a struct
/// from an array, positionally; the server sends objects only.)
fn object<'a, T: Deserialize<'a>>(text: &'a [u8]) -> Option<T> {
    if text.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice(text).ok()
}

/// The content of a raw JSON string value (escapes left as they are).
fn string_content(value: &RawValue) -> Option<&str> {
    let text = value.get();
    (text.len() >= 2 && text.starts_with('"') && text.ends_with('"')).then(|| &text[1..text.len() - 1])
}

/// Any JSON value, read leniently: `int` when it is a non-negative integer that fits a
/// `u64`; `seq`, `t` and `n` when it is an object with such integer members at its top
/// level. Nothing fails: a string, float, negative number, array or other object just
/// leaves the fields `None`, as a member the bench does not understand should.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Lenient {
    int: Option<u64>,
    seq: Option<u64>,
    t: Option<u64>,
    n: Option<u64>,
}

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor)
    }
}

struct LenientVisitor;

impl<'de> Visitor<'de> for LenientVisitor {
    type Value = Lenient;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Lenient, E> {
        Ok(Lenient {
            int: Some(v),
            ..Lenient::default()
        })
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Lenient, E> {
        Ok(Lenient::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Lenient, E> {
        Ok(Lenient::default())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Lenient, E> {
        Ok(Lenient::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Lenient, E> {
        Ok(Lenient::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Lenient, E> {
        Ok(Lenient::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Lenient, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Lenient::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Lenient, A::Error> {
        let mut read = Lenient::default();
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::Seq => &mut read.seq,
                Key::T => &mut read.t,
                Key::N => &mut read.n,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = map.next_value::<Lenient>()?.int;
        }
        Ok(read)
    }
}

/// A key of a nested object, matched as it is read (no copy: serde's `Cow<str>` would
/// always allocate).
enum Key {
    Seq,
    T,
    N,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(match key {
            "seq" => Key::Seq,
            "t" => Key::T,
            "n" => Key::N,
            _ => Key::Other,
        })
    }
}

/// Writes the JSON text of a `publish` of bench message `n` sent at `t` (ns) to `room`
/// (already a JSON string, quotes included), its body padded with `"p"` so the whole
/// frame is about `size` bytes. `exclude_self` keeps the publisher's own copy away.
pub fn write_publish(out: &mut Vec<u8>, room_json: &str, n: u64, t: u64, size: usize) {
    let start = out.len();
    out.extend_from_slice(b"{\"type\":\"publish\",\"room\":");
    out.extend_from_slice(room_json.as_bytes());
    out.extend_from_slice(b",\"exclude_self\":true,\"id\":");
    push_u64(out, n);
    out.extend_from_slice(b",\"body\":{\"t\":");
    push_u64(out, t);
    out.extend_from_slice(b",\"n\":");
    push_u64(out, n);
    // Padding: `,"p":"xx..."` to reach `size` with the closing `}}`.
    let so_far = out.len() - start + 2;
    if size > so_far + 7 {
        out.extend_from_slice(b",\"p\":\"");
        let pad = size - so_far - 7;
        out.resize(out.len() + pad, b'x');
        out.push(b'"');
    }
    out.extend_from_slice(b"}}");
}

/// Writes a `send` of bench message `n` sent at `t` to user `to_json` (a JSON string).
pub fn write_send(out: &mut Vec<u8>, to_json: &str, n: u64, t: u64) {
    out.extend_from_slice(b"{\"type\":\"send\",\"to\":");
    out.extend_from_slice(to_json.as_bytes());
    out.extend_from_slice(b",\"id\":");
    push_u64(out, n);
    out.extend_from_slice(b",\"body\":{\"t\":");
    push_u64(out, t);
    out.extend_from_slice(b",\"n\":");
    push_u64(out, n);
    out.extend_from_slice(b"}}");
}

/// Writes a `join` of `room_json` (a JSON string).
pub fn write_join(out: &mut Vec<u8>, room_json: &str) {
    out.extend_from_slice(b"{\"type\":\"join\",\"room\":");
    out.extend_from_slice(room_json.as_bytes());
    out.push(b'}');
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    let (buf, digits) = itoa_buf(v);
    out.extend_from_slice(&buf[20 - digits..]);
}

fn itoa_buf(mut v: u64) -> ([u8; 20], usize) {
    let mut buf = [0u8; 20];
    let mut i = 20;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    (buf, 20 - i)
}

/// Per-connection order of a room's (or inbox's) sequence numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqCheck {
    /// The last seq seen (or the join point); 0 before any.
    pub last: u64,
}

/// What one sequence number says about order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqVerdict {
    /// The next one.
    InOrder,
    /// `missing` numbers were skipped.
    Gap {
        /// How many.
        missing: u64,
    },
    /// Not after the last one: a repeat or a reordering.
    Backwards,
}

impl SeqCheck {
    /// Checks `seq` against the last one and moves on (not on backwards).
    pub fn observe(&mut self, seq: u64) -> SeqVerdict {
        if seq <= self.last {
            return SeqVerdict::Backwards;
        }
        let missing = seq - self.last - 1;
        self.last = seq;
        if missing == 0 {
            SeqVerdict::InOrder
        } else {
            SeqVerdict::Gap { missing }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::protocol::{self, ClientId, Encoding};
    use crate::msg::{MsgLimits, Position};

    #[test]
    fn reads_the_servers_room_msg() {
        let mut out = Vec::new();
        let id = ClientId::from_json_text("7");
        protocol::encode_room_msg(
            &mut out,
            "hot",
            42,
            Some("pub-0"),
            Some(&id),
            r#"{"t":123456789,"n":7,"p":"xx"}"#,
        );
        assert_eq!(
            read_server(&out),
            Incoming::RoomMsg {
                seq: Some(42),
                t: Some(123_456_789),
                n: Some(7)
            }
        );
    }

    #[test]
    fn keys_inside_strings_and_other_levels_do_not_count() {
        // A room and a sender whose names hold `"t":`, `"seq":` and braces.
        let mut out = Vec::new();
        protocol::encode_room_msg(
            &mut out,
            r#"r","seq":9,"t":1}"#,
            5,
            Some(r#"{"t":2,"n":3}"#),
            None,
            r#"{"x":{"t":99,"n":98},"t":11,"s":"\"t\":12","n":13}"#,
        );
        assert_eq!(
            read_server(&out),
            Incoming::RoomMsg {
                seq: Some(5),
                t: Some(11),
                n: Some(13)
            }
        );
        // A body that is not ours.
        out.clear();
        protocol::encode_room_msg(&mut out, "r", 6, Some("u"), None, r#"["t",1]"#);
        assert_eq!(
            read_server(&out),
            Incoming::RoomMsg {
                seq: Some(6),
                t: None,
                n: None
            }
        );
    }

    #[test]
    fn reads_the_other_answers() {
        let mut out = Vec::new();
        protocol::encode_welcome(
            &mut out,
            Encoding::Json,
            "sub-1",
            Position { epoch: 3, seq: 0 },
            &MsgLimits::default(),
        );
        assert_eq!(read_server(&out), Incoming::Welcome);
        out.clear();
        protocol::encode_joined(&mut out, None, "hot", Position { epoch: 3, seq: 17 }, 0);
        assert_eq!(read_server(&out), Incoming::Joined { seq: Some(17) });
        out.clear();
        let id = ClientId::from_json_text("55");
        protocol::encode_ack(
            &mut out,
            Some(&id),
            protocol::AckOf::Room { room: "hot" },
            Position { epoch: 3, seq: 18 },
        );
        assert_eq!(
            read_server(&out),
            Incoming::Ack {
                id: Some(55),
                seq: Some(18)
            }
        );
        out.clear();
        protocol::encode_error(&mut out, protocol::ErrorCode::Overloaded, "busy", None);
        assert_eq!(read_server(&out), Incoming::Error { code: "overloaded" });
        out.clear();
        protocol::encode_msg(&mut out, 4, Some("a"), None, r#"{"t":5,"n":6}"#);
        assert_eq!(
            read_server(&out),
            Incoming::Msg {
                seq: Some(4),
                t: Some(5),
                n: Some(6)
            }
        );
        out.clear();
        protocol::encode_left(&mut out, None, "hot");
        assert_eq!(read_server(&out), Incoming::Other("left"));
    }

    #[test]
    fn reading_the_hot_messages_allocates_nothing() {
        let mut frames = Vec::new();
        let id = ClientId::from_json_text("7");
        let mut out = Vec::new();
        protocol::encode_room_msg(
            &mut out,
            "hot",
            42,
            Some("pub-0"),
            Some(&id),
            r#"{"t":1,"n":2,"p":"xx"}"#,
        );
        frames.push(std::mem::take(&mut out));
        protocol::encode_msg(&mut out, 4, Some("a"), None, r#"{"t":5,"n":6}"#);
        frames.push(std::mem::take(&mut out));
        protocol::encode_ack(
            &mut out,
            Some(&id),
            protocol::AckOf::Room { room: "hot" },
            Position { epoch: 3, seq: 18 },
        );
        frames.push(std::mem::take(&mut out));
        protocol::encode_joined(&mut out, None, "hot", Position { epoch: 3, seq: 17 }, 0);
        frames.push(std::mem::take(&mut out));
        let before = crate::testalloc::thread_allocations();
        let mut read = 0;
        for frame in &frames {
            read += usize::from(std::hint::black_box(read_server(frame)) != Incoming::Bad);
        }
        assert_eq!(crate::testalloc::thread_allocations() - before, 0);
        assert_eq!(read, frames.len());
        // The counter does count: a message with an escape in a key it reads is copied.
        let before = crate::testalloc::thread_allocations();
        std::hint::black_box(read_server(br#"{"type":"msg","body":{"\u0074":1}}"#));
        assert!(crate::testalloc::thread_allocations() > before);
    }

    #[test]
    fn garbage_is_bad() {
        for text in [
            &b""[..],
            b"[]",
            b"{",
            b"{\"type\":",
            b"{\"type\":\"room_msg\"",
            b"{\"seq\":1}",
            b"{\"type\":\"x\" \"a\":1}",
            b"\"room_msg\"",
            b"{\"type\":\"a\\\"}",
        ] {
            assert_eq!(read_server(text), Incoming::Bad, "{}", String::from_utf8_lossy(text));
        }
        assert_eq!(read_server(b" { \"type\" : \"x\" } "), Incoming::Other("x"));
    }

    #[test]
    fn publish_frames_are_what_the_server_parses() {
        let limits = MsgLimits::default();
        for size in [0, 40, 64, 65, 200, 1000] {
            let mut out = Vec::new();
            write_publish(&mut out, "\"hot\"", 12, 987_654_321, size);
            if size >= 80 {
                assert_eq!(out.len(), size, "{}", String::from_utf8_lossy(&out));
            }
            let parsed = protocol::parse(protocol::FrameKind::Text, &out, &limits).expect("valid publish");
            match parsed {
                protocol::ClientMsg::Publish {
                    room,
                    id,
                    body,
                    exclude_self,
                } => {
                    assert_eq!(room, "hot");
                    assert_eq!(id.unwrap().as_json(), "12");
                    assert!(exclude_self);
                    let read = object::<Lenient>(body.get().as_bytes()).expect("an object");
                    assert_eq!(read.t, Some(987_654_321));
                }
                other => panic!("{other:?}"),
            }
        }
        let mut out = Vec::new();
        write_join(&mut out, "\"hot\"");
        assert!(matches!(
            protocol::parse(protocol::FrameKind::Text, &out, &limits),
            Ok(protocol::ClientMsg::Join { .. })
        ));
        out.clear();
        write_send(&mut out, "\"u-1\"", 3, 4);
        assert!(matches!(
            protocol::parse(protocol::FrameKind::Text, &out, &limits),
            Ok(protocol::ClientMsg::Send { .. })
        ));
    }

    #[test]
    fn sequence_order_and_gaps() {
        let mut check = SeqCheck { last: 10 };
        assert_eq!(check.observe(11), SeqVerdict::InOrder);
        assert_eq!(check.observe(14), SeqVerdict::Gap { missing: 2 });
        assert_eq!(check.observe(14), SeqVerdict::Backwards);
        assert_eq!(check.observe(3), SeqVerdict::Backwards);
        assert_eq!(check.observe(15), SeqVerdict::InOrder);
        assert_eq!(check.last, 15);
    }

    /// What the old scanner's `number` returned for a raw value: the value read leniently.
    fn number(raw: &[u8]) -> Option<u64> {
        serde_json::from_slice::<Lenient>(raw).ok()?.int
    }

    #[test]
    fn numbers() {
        assert_eq!(number(b"0"), Some(0));
        assert_eq!(number(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(number(b"18446744073709551616"), None);
        assert_eq!(number(b"-1"), None);
        assert_eq!(number(b"1.5"), None);
        assert_eq!(number(b"\"1\""), None);
    }
}
