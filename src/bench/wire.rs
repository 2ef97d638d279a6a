//! What the bench reads from and writes to a gateway speaking `wsgate.v1.json`, without
//! a JSON tree.
//!
//! A fan-out subscriber receives one `room_msg` per publish, so reading them must cost
//! little: [`read_server`] walks the top-level object once (keys and values are
//! delimited, strings with escapes skipped correctly, nested values skipped by depth),
//! picks out the few fields the bench needs, and looks inside `body` for the bench's own
//! `"t"` (send time, ns) and `"n"` (publish number). Nothing is allocated; a frame that
//! is not a JSON object is [`Incoming::Bad`]. Because keys are matched only at the top
//! level (and `t`/`n` only at the top level of `body`), a room name or user id
//! containing `"t":` cannot fool it.
//!
//! The publish frames are written here too ([`write_publish`]).
#![forbid(unsafe_code)]

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
    let mut kind: Option<&[u8]> = None;
    let (mut seq, mut id, mut code) = (None, None, None);
    let mut body: Option<&[u8]> = None;
    let mut at: Option<&[u8]> = None;
    let ok = for_each_member(frame, |key, value| {
        match key {
            b"type" => kind = string_content(value),
            b"seq" => seq = number(value),
            b"id" => id = number(value),
            b"code" => code = string_content(value),
            b"body" => body = Some(value),
            b"at" => at = Some(value),
            _ => {}
        }
        true
    });
    let Some(kind) = kind.filter(|_| ok) else {
        return Incoming::Bad;
    };
    let body_fields = || {
        let (mut t, mut n) = (None, None);
        if let Some(body) = body {
            for_each_member(body, |key, value| {
                match key {
                    b"t" => t = number(value),
                    b"n" => n = number(value),
                    _ => {}
                }
                true
            });
        }
        (t, n)
    };
    match kind {
        b"room_msg" => {
            let (t, n) = body_fields();
            Incoming::RoomMsg { seq, t, n }
        }
        b"msg" => {
            let (t, n) = body_fields();
            Incoming::Msg { seq, t, n }
        }
        b"ack" => Incoming::Ack { id, seq },
        b"welcome" => Incoming::Welcome,
        b"joined" => {
            let mut at_seq = None;
            if let Some(at) = at {
                for_each_member(at, |key, value| {
                    if key == b"seq" {
                        at_seq = number(value);
                    }
                    true
                });
            }
            Incoming::Joined { seq: at_seq }
        }
        b"error" => Incoming::Error {
            code: std::str::from_utf8(code.unwrap_or(b"unknown")).unwrap_or("unknown"),
        },
        other => Incoming::Other(std::str::from_utf8(other).unwrap_or("?")),
    }
}

/// Calls `f(key, value)` for each member of the JSON object `text` (the key as raw
/// string content, the value as its raw JSON text) until `f` returns false. Returns
/// whether `text` was a well-formed object as far as it was read.
pub fn for_each_member<'a>(text: &'a [u8], mut f: impl FnMut(&'a [u8], &'a [u8]) -> bool) -> bool {
    let mut i = skip_ws(text, 0);
    if text.get(i) != Some(&b'{') {
        return false;
    }
    i = skip_ws(text, i + 1);
    if text.get(i) == Some(&b'}') {
        return true;
    }
    loop {
        let Some(key_end) = skip_string(text, i) else {
            return false;
        };
        let key = &text[i + 1..key_end - 1];
        i = skip_ws(text, key_end);
        if text.get(i) != Some(&b':') {
            return false;
        }
        let start = skip_ws(text, i + 1);
        let Some(end) = skip_value(text, start) else {
            return false;
        };
        if !f(key, &text[start..end]) {
            return true;
        }
        i = skip_ws(text, end);
        match text.get(i) {
            Some(b',') => i = skip_ws(text, i + 1),
            Some(b'}') => return true,
            _ => return false,
        }
    }
}

fn skip_ws(text: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = text.get(i) {
        i += 1;
    }
    i
}

/// `text[i]` starts a string: the index just past its closing quote.
fn skip_string(text: &[u8], i: usize) -> Option<usize> {
    if text.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match text.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
}

/// `text[i]` starts a value: the index just past it.
fn skip_value(text: &[u8], i: usize) -> Option<usize> {
    match text.get(i)? {
        b'"' => skip_string(text, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match text.get(j)? {
                    b'"' => {
                        j = skip_string(text, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            // Number, true, false, null: up to the next delimiter.
            let mut j = i;
            while let Some(&c) = text.get(j) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The content of a raw JSON string value (escapes left as they are).
fn string_content(value: &[u8]) -> Option<&[u8]> {
    (value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"').then(|| &value[1..value.len() - 1])
}

/// A raw JSON value that is a non-negative integer.
fn number(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
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
                    let mut t = None;
                    assert!(for_each_member(body.get().as_bytes(), |k, v| {
                        if k == b"t" {
                            t = number(v);
                        }
                        true
                    }));
                    assert_eq!(t, Some(987_654_321));
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
