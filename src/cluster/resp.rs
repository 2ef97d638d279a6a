//! RESP, the Redis protocol, sans-IO: commands encoded into a caller buffer, replies
//! decoded from a byte slice.
//!
//! In: the arguments of a command ([`encode_command`]), or the bytes read so far
//! ([`decode`]). Out: the command's bytes appended to the caller's `Vec`, or "need more"
//! (`Ok(None)`) or one reply and the bytes it used (`Ok(Some((value, used)))`), or a
//! [`DecodeError`] (a value, never a panic).
//!
//! Replies are RESP2 and RESP3: simple string, error, integer, bulk string (and bulk
//! error and verbatim string), null (all three spellings), boolean, double, big number,
//! array, set, map and push (pub/sub messages arrive as pushes under RESP3). Attributes
//! (`|`) are read and dropped: the value after them is the reply. Streamed strings and
//! aggregates (`$?`, `*?`) are refused: Redis does not send them.
//!
//! # Bounded
//!
//! A reply is decoded in two passes. The first walks the bytes without recursion and
//! without allocating (one counter per open aggregate in a fixed array of
//! [`MAX_DEPTH`] slots) and checks every declared length against [`Limits`] before it
//! waits for the bytes: a bulk string over `max_bulk_bytes`, an aggregate over
//! `max_elements`, nesting over `max_depth`, a line over `max_line_bytes`, or a reply
//! over `max_frame_bytes` (complete or still arriving) is an error as soon as its header
//! is read. Only a reply the first pass found complete is built, so what is allocated is
//! bounded by bytes that actually arrived, never by a length a server declared, and the
//! building recursion is at most `max_depth` deep. A bad server cannot make us allocate
//! without bound or overflow the stack.
//!
//! A reply still arriving is scanned again from its start on each call; the scan is
//! linear in the reply's headers (a bulk string's body is skipped by its length), and a
//! reply is at most `max_frame_bytes`.

use std::fmt;

/// The deepest nesting any [`Limits`] may allow (the size of the scanner's stack).
pub const MAX_DEPTH: usize = 64;

/// One decoded reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `+OK`: a simple string (bytes: Redis does not promise UTF-8).
    Simple(Vec<u8>),
    /// `-ERR ...` or a bulk error `!`: an error reply, a value like any other.
    Error(Vec<u8>),
    /// `:42`.
    Integer(i64),
    /// `$5\r\nhello`, or a verbatim string `=` (its 3-letter format and `:` removed).
    Bulk(Vec<u8>),
    /// `$-1`, `*-1` (RESP2) or `_` (RESP3).
    Null,
    /// `#t` / `#f`.
    Boolean(bool),
    /// `,3.14`, `,inf`, `,nan`.
    Double(f64),
    /// `(3492890328409238509324850943850943825024385`: the digits as sent.
    BigNumber(Vec<u8>),
    /// `*N`.
    Array(Vec<Value>),
    /// `~N`.
    Set(Vec<Value>),
    /// `%N`: key, value pairs in the order sent.
    Map(Vec<(Value, Value)>),
    /// `>N`: out-of-band data (pub/sub messages, invalidations), not a command's reply.
    Push(Vec<Value>),
}

impl Value {
    /// The bytes of a simple string or bulk string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Simple(b) | Value::Bulk(b) => Some(b),
            _ => None,
        }
    }

    /// The error text of an error reply.
    pub fn as_error(&self) -> Option<&[u8]> {
        match self {
            Value::Error(b) => Some(b),
            _ => None,
        }
    }

    /// The number of an integer reply.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(n) => Some(*n),
            _ => None,
        }
    }

    /// The elements of an array, set or push.
    pub fn as_items(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) | Value::Set(v) | Value::Push(v) => Some(v),
            _ => None,
        }
    }
}

/// What the decoder accepts from a server. Every limit is checked against the declared
/// length, before the bytes are waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string (or bulk error, verbatim string), in bytes.
    pub max_bulk_bytes: usize,
    /// Most elements in one aggregate (a map's pairs count twice).
    pub max_elements: usize,
    /// Deepest nesting of aggregates (at most [`MAX_DEPTH`]; a larger value is capped).
    pub max_depth: usize,
    /// Longest line of a simple string, error, integer, double or big number.
    pub max_line_bytes: usize,
    /// Largest reply, in bytes, complete or still arriving.
    pub max_frame_bytes: usize,
}

impl Default for Limits {
    /// 64 MiB bulk and reply, 1,048,576 elements, 16 levels, 64 KiB lines: far above what
    /// the gateway reads back (64 KiB payloads, histories of hundreds of messages).
    fn default() -> Self {
        Self {
            max_bulk_bytes: 64 << 20,
            max_elements: 1 << 20,
            max_depth: 16,
            max_line_bytes: 64 << 10,
            max_frame_bytes: 64 << 20,
        }
    }
}

/// Why bytes are not a reply. The connection that read them cannot be trusted to be in
/// step any more: it is closed and reconnected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The first byte of a value is no RESP type.
    UnknownType(u8),
    /// A length or count is not `-1` or a decimal number (or `-1` where null is not
    /// allowed).
    BadLength,
    /// An integer is not a decimal `i64`; a boolean is not `t` or `f`; a double or big
    /// number is malformed; a verbatim string has no format; a line holds CR or LF.
    BadValue,
    /// A bulk string's body is not followed by CRLF.
    MissingCrlf,
    /// `$?` / `*?`: streamed replies are not supported.
    Streamed,
    /// A bulk string declared larger than `max_bulk_bytes`.
    BulkTooLarge,
    /// An aggregate declared with more than `max_elements` elements.
    TooManyElements,
    /// Aggregates nested deeper than `max_depth`.
    TooDeep,
    /// A line longer than `max_line_bytes`.
    LineTooLong,
    /// A reply larger than `max_frame_bytes`.
    FrameTooLarge,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnknownType(b) => write!(f, "unknown RESP type byte 0x{b:02x}"),
            DecodeError::BadLength => f.write_str("malformed RESP length"),
            DecodeError::BadValue => f.write_str("malformed RESP value"),
            DecodeError::MissingCrlf => f.write_str("RESP bulk string not followed by CRLF"),
            DecodeError::Streamed => f.write_str("streamed RESP replies are not supported"),
            DecodeError::BulkTooLarge => f.write_str("RESP bulk string over the size limit"),
            DecodeError::TooManyElements => f.write_str("RESP aggregate over the element limit"),
            DecodeError::TooDeep => f.write_str("RESP reply nested over the depth limit"),
            DecodeError::LineTooLong => f.write_str("RESP line over the length limit"),
            DecodeError::FrameTooLarge => f.write_str("RESP reply over the size limit"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Appends one command, an array of bulk strings, to `out`.
pub fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    out.push(b'*');
    push_decimal(out, args.len() as u64);
    out.extend_from_slice(b"\r\n");
    for arg in args {
        let arg = arg.as_ref();
        out.push(b'$');
        push_decimal(out, arg.len() as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// The bytes a command takes once encoded (for bounding an outbox before encoding).
pub fn encoded_len<A: AsRef<[u8]>>(args: &[A]) -> usize {
    let header = |n: usize| 3 + decimal_len(n as u64);
    header(args.len())
        + args
            .iter()
            .map(|a| header(a.as_ref().len()) + a.as_ref().len() + 2)
            .sum::<usize>()
}

/// Appends `value` as RESP3 (the server side of the protocol: test servers and
/// round-trip tests use it). Simple strings and errors must hold no CR or LF; a
/// `Value::Null` is written `_`.
pub fn encode_value(out: &mut Vec<u8>, value: &Value) {
    fn line(out: &mut Vec<u8>, ty: u8, body: &[u8]) {
        out.push(ty);
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    fn head(out: &mut Vec<u8>, ty: u8, n: usize) {
        out.push(ty);
        push_decimal(out, n as u64);
        out.extend_from_slice(b"\r\n");
    }
    match value {
        Value::Simple(s) => line(out, b'+', s),
        Value::Error(s) => line(out, b'-', s),
        Value::Integer(n) => line(out, b':', n.to_string().as_bytes()),
        Value::Bulk(b) => {
            head(out, b'$', b.len());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Value::Null => out.extend_from_slice(b"_\r\n"),
        Value::Boolean(b) => line(out, b'#', if *b { b"t" } else { b"f" }),
        Value::Double(d) => {
            let text = if d.is_nan() {
                "nan".to_owned()
            } else if d.is_infinite() {
                if *d > 0.0 { "inf" } else { "-inf" }.to_owned()
            } else {
                format!("{d:?}")
            };
            line(out, b',', text.as_bytes())
        }
        Value::BigNumber(b) => line(out, b'(', b),
        Value::Array(items) | Value::Set(items) | Value::Push(items) => {
            let ty = match value {
                Value::Array(_) => b'*',
                Value::Set(_) => b'~',
                _ => b'>',
            };
            head(out, ty, items.len());
            for item in items {
                encode_value(out, item);
            }
        }
        Value::Map(pairs) => {
            head(out, b'%', pairs.len());
            for (k, v) in pairs {
                encode_value(out, k);
                encode_value(out, v);
            }
        }
    }
}

/// Decodes one reply from the start of `input`: `Ok(None)` if more bytes are needed,
/// `Ok(Some((value, used)))` once one whole reply is there (`used` bytes of `input`).
pub fn decode(input: &[u8], limits: &Limits) -> Result<Option<(Value, usize)>, DecodeError> {
    let Some(end) = scan(input, limits)? else {
        return Ok(None);
    };
    let (value, used) = build(&input[..end], 0)?;
    debug_assert_eq!(used, end);
    Ok(Some((value, used)))
}

/// One open aggregate in the scanner: elements still to come, and whether it is an
/// attribute (which does not count as an element of its parent).
#[derive(Clone, Copy)]
struct Open {
    remaining: usize,
    attribute: bool,
}

/// The first pass: the length of the whole reply at the start of `input`, or `None` if
/// it is not all there yet. Iterative, no allocation, every limit checked.
fn scan(input: &[u8], limits: &Limits) -> Result<Option<usize>, DecodeError> {
    let max_depth = limits.max_depth.min(MAX_DEPTH);
    let mut stack = [Open {
        remaining: 0,
        attribute: false,
    }; MAX_DEPTH];
    let mut depth = 0;
    let mut pos = 0;
    loop {
        if pos > limits.max_frame_bytes {
            return Err(DecodeError::FrameTooLarge);
        }
        let Some((ty, body, next)) = read_line(input, pos, limits)? else {
            return Ok(None);
        };
        pos = next;
        // The aggregate this header opens, if any.
        let opened = match ty {
            b'+' | b'-' => {
                check_line_text(body)?;
                None
            }
            b':' => {
                parse_i64(body)?;
                None
            }
            b'_' => {
                if !body.is_empty() {
                    return Err(DecodeError::BadValue);
                }
                None
            }
            b'#' => {
                parse_bool(body)?;
                None
            }
            b',' => {
                parse_double(body)?;
                None
            }
            b'(' => {
                check_big_number(body)?;
                None
            }
            b'$' | b'!' | b'=' => {
                match parse_len(body, ty == b'$')? {
                    None => {}
                    Some(len) => {
                        if len > limits.max_bulk_bytes {
                            return Err(DecodeError::BulkTooLarge);
                        }
                        let end = pos.checked_add(len).and_then(|e| e.checked_add(2));
                        let end = end.ok_or(DecodeError::BulkTooLarge)?;
                        if end > limits.max_frame_bytes {
                            return Err(DecodeError::FrameTooLarge);
                        }
                        if input.len() < end {
                            return Ok(None);
                        }
                        if &input[end - 2..end] != b"\r\n" {
                            return Err(DecodeError::MissingCrlf);
                        }
                        if ty == b'=' && (len < 4 || input[pos + 3] != b':') {
                            return Err(DecodeError::BadValue);
                        }
                        pos = end;
                    }
                }
                None
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => match parse_len(body, ty == b'*')? {
                None => None,
                Some(n) => {
                    let elements = if matches!(ty, b'%' | b'|') {
                        n.checked_mul(2).ok_or(DecodeError::TooManyElements)?
                    } else {
                        n
                    };
                    if elements > limits.max_elements {
                        return Err(DecodeError::TooManyElements);
                    }
                    Some(Open {
                        remaining: elements,
                        attribute: ty == b'|',
                    })
                }
            },
            other => return Err(DecodeError::UnknownType(other)),
        };
        match opened {
            Some(open) if open.remaining > 0 => {
                if depth == max_depth {
                    return Err(DecodeError::TooDeep);
                }
                stack[depth] = open;
                depth += 1;
                continue;
            }
            // An empty attribute: the value that follows is the element.
            Some(open) if open.attribute => continue,
            _ => {}
        }
        // One value is complete: count it in its parent, closing what it completes.
        loop {
            if depth == 0 {
                if pos > limits.max_frame_bytes {
                    return Err(DecodeError::FrameTooLarge);
                }
                return Ok(Some(pos));
            }
            let top = &mut stack[depth - 1];
            top.remaining -= 1;
            if top.remaining > 0 {
                break;
            }
            let attribute = top.attribute;
            depth -= 1;
            if attribute {
                // The attribute is done; the value after it counts, not the attribute.
                break;
            }
        }
    }
}

/// The second pass, over a reply the scan found whole and within limits (so the
/// recursion is at most `max_depth` deep). Returns the value and the bytes used.
fn build(input: &[u8], pos: usize) -> Result<(Value, usize), DecodeError> {
    let unlimited = Limits {
        max_bulk_bytes: usize::MAX,
        max_elements: usize::MAX,
        max_depth: MAX_DEPTH,
        max_line_bytes: usize::MAX,
        max_frame_bytes: usize::MAX,
    };
    let (ty, body, next) = read_line(input, pos, &unlimited)?.ok_or(DecodeError::BadLength)?;
    let value = match ty {
        b'+' => Value::Simple(body.to_vec()),
        b'-' => Value::Error(body.to_vec()),
        b':' => Value::Integer(parse_i64(body)?),
        b'_' => Value::Null,
        b'#' => Value::Boolean(parse_bool(body)?),
        b',' => Value::Double(parse_double(body)?),
        b'(' => Value::BigNumber(body.to_vec()),
        b'$' | b'!' | b'=' => match parse_len(body, ty == b'$')? {
            None => Value::Null,
            Some(len) => {
                let bytes = input.get(next..next + len).ok_or(DecodeError::BadLength)?;
                let value = match ty {
                    b'$' => Value::Bulk(bytes.to_vec()),
                    b'!' => Value::Error(bytes.to_vec()),
                    _ => Value::Bulk(bytes[4..].to_vec()),
                };
                return Ok((value, next + len + 2));
            }
        },
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let Some(n) = parse_len(body, ty == b'*')? else {
                return Ok((Value::Null, next));
            };
            let mut at = next;
            let mut items = Vec::new();
            let count = if matches!(ty, b'%' | b'|') { 2 * n } else { n };
            for _ in 0..count {
                let (item, used) = build(input, at)?;
                items.push(item);
                at = used;
            }
            let value = match ty {
                b'*' => Value::Array(items),
                b'~' => Value::Set(items),
                b'>' => Value::Push(items),
                b'%' => {
                    let mut pairs = Vec::with_capacity(n);
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    Value::Map(pairs)
                }
                // An attribute: dropped, the next value is the reply.
                _ => return build(input, at),
            };
            return Ok((value, at));
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    Ok((value, next))
}

/// A line: its type byte, what follows it up to CRLF, and the offset after the CRLF.
type Line<'a> = (u8, &'a [u8], usize);

/// The line starting at `pos`; `None` if its CRLF has not arrived.
fn read_line<'a>(input: &'a [u8], pos: usize, limits: &Limits) -> Result<Option<Line<'a>>, DecodeError> {
    let Some(&ty) = input.get(pos) else {
        return Ok(None);
    };
    if !is_type(ty) {
        return Err(DecodeError::UnknownType(ty));
    }
    let rest = &input[pos + 1..];
    let window = &rest[..rest.len().min(limits.max_line_bytes.saturating_add(2))];
    match window.iter().position(|&b| b == b'\n') {
        Some(0) => Err(DecodeError::BadValue),
        Some(lf) => {
            if window[lf - 1] != b'\r' {
                return Err(DecodeError::BadValue);
            }
            let body = &rest[..lf - 1];
            if body.len() > limits.max_line_bytes {
                return Err(DecodeError::LineTooLong);
            }
            Ok(Some((ty, body, pos + 1 + lf + 1)))
        }
        // Longer than a line may be, unless all that is missing is the LF after a CR.
        None if window.len() > limits.max_line_bytes
            && (window.len() > limits.max_line_bytes.saturating_add(1) || window[limits.max_line_bytes] != b'\r') =>
        {
            Err(DecodeError::LineTooLong)
        }
        None => Ok(None),
    }
}

fn is_type(b: u8) -> bool {
    matches!(
        b,
        b'+' | b'-' | b':' | b'$' | b'*' | b'_' | b'#' | b',' | b'(' | b'!' | b'=' | b'%' | b'~' | b'>' | b'|'
    )
}

fn check_line_text(body: &[u8]) -> Result<(), DecodeError> {
    if body.contains(&b'\r') {
        return Err(DecodeError::BadValue);
    }
    Ok(())
}

/// `-1` → `None` (null) where allowed, digits → `Some(n)`; `?` → streamed.
fn parse_len(body: &[u8], null_allowed: bool) -> Result<Option<usize>, DecodeError> {
    match body {
        b"?" => Err(DecodeError::Streamed),
        b"-1" if null_allowed => Ok(None),
        _ => {
            if body.is_empty() || body.len() > 19 || !body.iter().all(u8::is_ascii_digit) {
                return Err(DecodeError::BadLength);
            }
            let n: u64 = body.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0'));
            usize::try_from(n).map(Some).map_err(|_| DecodeError::BadLength)
        }
    }
}

fn parse_i64(body: &[u8]) -> Result<i64, DecodeError> {
    let (negative, digits) = match body.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, body),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(DecodeError::BadValue);
    }
    let mut n: i64 = 0;
    for &d in digits {
        let d = i64::from(d - b'0');
        n = n
            .checked_mul(10)
            .and_then(|n| if negative { n.checked_sub(d) } else { n.checked_add(d) })
            .ok_or(DecodeError::BadValue)?;
    }
    Ok(n)
}

fn parse_bool(body: &[u8]) -> Result<bool, DecodeError> {
    match body {
        b"t" => Ok(true),
        b"f" => Ok(false),
        _ => Err(DecodeError::BadValue),
    }
}

fn parse_double(body: &[u8]) -> Result<f64, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|_| DecodeError::BadValue)?;
    // Rust's parser also takes "infinity" and "+nan"; RESP3 says inf, -inf, nan.
    let special = matches!(text, "inf" | "-inf" | "nan");
    if !special && (text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))) {
        return Err(DecodeError::BadValue);
    }
    text.parse().map_err(|_| DecodeError::BadValue)
}

fn check_big_number(body: &[u8]) -> Result<(), DecodeError> {
    let digits = body.strip_prefix(b"-").unwrap_or(body);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(DecodeError::BadValue);
    }
    Ok(())
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dec(input: &[u8]) -> Result<Option<(Value, usize)>, DecodeError> {
        decode(input, &Limits::default())
    }

    fn case<T>(bytes: &'static [u8], want: T) -> (&'static [u8], T) {
        (bytes, want)
    }

    fn bulk(s: &str) -> Value {
        Value::Bulk(s.as_bytes().to_vec())
    }

    /// Decodes every reply in `bytes` at once.
    fn all(bytes: &[u8]) -> Vec<Value> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let (v, used) = dec(&bytes[at..]).unwrap().expect("whole replies");
            out.push(v);
            at += used;
        }
        out
    }

    /// Feeds `bytes` as two reads split at `cut`, as a connection would: buffer what
    /// arrived, decode what is whole, keep the rest. Returns the replies.
    fn split_feed(bytes: &[u8], cut: usize, limits: &Limits) -> Vec<Value> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for part in [&bytes[..cut], &bytes[cut..]] {
            buf.extend_from_slice(part);
            let mut at = 0;
            while let Some((v, used)) = decode(&buf[at..], limits).unwrap() {
                assert!(used > 0);
                out.push(v);
                at += used;
            }
            buf.drain(..at);
        }
        assert!(buf.is_empty(), "cut at {cut}: {} bytes left over", buf.len());
        out
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &["SET", "k", "hello world"]);
        encode_command(&mut out, &[&b"GET"[..], b""]);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$11\r\nhello world\r\n*2\r\n$3\r\nGET\r\n$0\r\n\r\n"
        );
        assert_eq!(encoded_len(&["SET", "k", "hello world"]), 38);
        let big = vec![b'x'; 12345];
        let mut out = Vec::new();
        encode_command(&mut out, &[&b"SET"[..], &big]);
        assert_eq!(encoded_len(&[&b"SET"[..], &big]), out.len());
    }

    #[test]
    fn every_reply_type_decodes() {
        let cases: Vec<(&[u8], Value)> = vec![
            case(b"+OK\r\n", Value::Simple(b"OK".to_vec())),
            case(
                b"-ERR unknown command\r\n",
                Value::Error(b"ERR unknown command".to_vec()),
            ),
            case(b":-42\r\n", Value::Integer(-42)),
            case(b":9223372036854775807\r\n", Value::Integer(i64::MAX)),
            case(b":-9223372036854775808\r\n", Value::Integer(i64::MIN)),
            case(b"$5\r\nhe\r\no\r\n", bulk("he\r\no")),
            case(b"$0\r\n\r\n", bulk("")),
            case(b"$-1\r\n", Value::Null),
            case(b"*-1\r\n", Value::Null),
            case(b"_\r\n", Value::Null),
            case(b"#t\r\n", Value::Boolean(true)),
            case(b"#f\r\n", Value::Boolean(false)),
            case(b",3.25\r\n", Value::Double(3.25)),
            case(b",-inf\r\n", Value::Double(f64::NEG_INFINITY)),
            case(
                b"(12345678901234567890123\r\n",
                Value::BigNumber(b"12345678901234567890123".to_vec()),
            ),
            case(b"!10\r\nSYNTAX bad\r\n", Value::Error(b"SYNTAX bad".to_vec())),
            case(b"=7\r\ntxt:abc\r\n", bulk("abc")),
            case(b"*0\r\n", Value::Array(vec![])),
            case(
                b"*2\r\n:1\r\n$1\r\na\r\n",
                Value::Array(vec![Value::Integer(1), bulk("a")]),
            ),
            case(b"~1\r\n+x\r\n", Value::Set(vec![Value::Simple(b"x".to_vec())])),
            case(
                b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n",
                Value::Map(vec![
                    (bulk("server"), bulk("redis")),
                    (bulk("proto"), Value::Integer(3)),
                ]),
            ),
            case(
                b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
                Value::Push(vec![bulk("message"), bulk("ch"), bulk("hi")]),
            ),
            // An attribute is dropped; the value after it is the reply, also nested.
            case(b"|1\r\n+ttl\r\n:3\r\n:7\r\n", Value::Integer(7)),
            case(
                b"*2\r\n|0\r\n:1\r\n|1\r\n+a\r\n+b\r\n:2\r\n",
                Value::Array(vec![Value::Integer(1), Value::Integer(2)]),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                dec(bytes),
                Ok(Some((want, bytes.len()))),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let nan = dec(b",nan\r\n").unwrap().unwrap().0;
        assert!(matches!(nan, Value::Double(d) if d.is_nan()));
    }

    #[test]
    fn nested_arrays_decode() {
        let bytes = b"*3\r\n*2\r\n*1\r\n:1\r\n*0\r\n%1\r\n+k\r\n*2\r\n_\r\n$1\r\nv\r\n>1\r\n~0\r\n";
        let want = Value::Array(vec![
            Value::Array(vec![Value::Array(vec![Value::Integer(1)]), Value::Array(vec![])]),
            Value::Map(vec![(
                Value::Simple(b"k".to_vec()),
                Value::Array(vec![Value::Null, bulk("v")]),
            )]),
            Value::Push(vec![Value::Set(vec![])]),
        ]);
        assert_eq!(dec(bytes), Ok(Some((want, bytes.len()))));
        // 16 levels are fine by default, 17 are not.
        let deep = |n: usize| {
            let mut b = b"*1\r\n".repeat(n);
            b.extend_from_slice(b":0\r\n");
            b
        };
        assert!(matches!(dec(&deep(16)), Ok(Some(_))));
        assert_eq!(dec(&deep(17)), Err(DecodeError::TooDeep));
        // A million levels: an error at level 17, no stack overflow.
        assert_eq!(dec(&deep(1_000_000)), Err(DecodeError::TooDeep));
    }

    #[test]
    fn need_more_until_the_reply_is_whole() {
        for bytes in [
            &b"$5\r\nhello\r\n"[..],
            b"*2\r\n:1\r\n:2\r\n",
            b"+OK\r\n",
            b"%1\r\n+a\r\n|1\r\n+x\r\n+y\r\n+b\r\n",
        ] {
            for cut in 0..bytes.len() {
                assert_eq!(
                    dec(&bytes[..cut]),
                    Ok(None),
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(bytes)
                );
            }
            assert!(matches!(dec(bytes), Ok(Some((_, n))) if n == bytes.len()));
        }
    }

    /// A stream of replies of every kind, split in two at every byte offset: the same
    /// replies come out, in order, whatever the split.
    #[test]
    fn replies_split_at_every_offset_decode_the_same() {
        let stream: &[u8] = b"+OK\r\n-ERR x\r\n:12\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n_\r\n#t\r\n,1.5\r\n(99\r\n\
            !3\r\nbad\r\n=8\r\ntxt:abcd\r\n*2\r\n*1\r\n$2\r\nhi\r\n%1\r\n+k\r\n:1\r\n~1\r\n#f\r\n\
            >3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$0\r\n\r\n|1\r\n+a\r\n+b\r\n:5\r\n";
        let want = all(stream);
        assert_eq!(want.len(), 16);
        for cut in 0..=stream.len() {
            assert_eq!(split_feed(stream, cut, &Limits::default()), want, "cut at {cut}");
        }
        // One byte at a time.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for &b in stream {
            buf.push(b);
            if let Some((v, used)) = dec(&buf).unwrap() {
                got.push(v);
                buf.drain(..used);
            }
        }
        assert_eq!(got, want);
    }

    #[test]
    fn malformed_replies_are_errors() {
        let cases: Vec<(&[u8], DecodeError)> = vec![
            case(b"?oops\r\n", DecodeError::UnknownType(b'?')),
            case(b"OK\r\n", DecodeError::UnknownType(b'O')),
            case(b":12a\r\n", DecodeError::BadValue),
            case(b":\r\n", DecodeError::BadValue),
            case(b":99999999999999999999\r\n", DecodeError::BadValue),
            case(b"$abc\r\n", DecodeError::BadLength),
            case(b"$-2\r\n", DecodeError::BadLength),
            case(b"!-1\r\n", DecodeError::BadLength),
            case(b"%-1\r\n", DecodeError::BadLength),
            case(b"$3\r\nabcde\r\n", DecodeError::MissingCrlf),
            case(b"$?\r\n", DecodeError::Streamed),
            case(b"*?\r\n", DecodeError::Streamed),
            case(b"#x\r\n", DecodeError::BadValue),
            case(b",1.2.3\r\n", DecodeError::BadValue),
            case(b",infinity\r\n", DecodeError::BadValue),
            case(b"(12a\r\n", DecodeError::BadValue),
            case(b"=2\r\nab\r\n", DecodeError::BadValue),
            case(b"_x\r\n", DecodeError::BadValue),
            case(b"+a\rb\r\n", DecodeError::BadValue),
            case(b"+OK\n", DecodeError::BadValue),
            case(b"*2\r\n:1\r\n@\r\n", DecodeError::UnknownType(b'@')),
        ];
        for (bytes, want) in cases {
            assert_eq!(dec(bytes), Err(want), "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    /// Declared sizes over the limits are refused from the header alone, before the bytes
    /// would arrive (nothing is waited for or allocated for them).
    #[test]
    fn limits_are_checked_at_the_header() {
        let limits = Limits {
            max_bulk_bytes: 10,
            max_elements: 4,
            max_depth: 2,
            max_line_bytes: 8,
            max_frame_bytes: 64,
        };
        let d = |b: &[u8]| decode(b, &limits);
        assert_eq!(d(b"$11\r\n"), Err(DecodeError::BulkTooLarge));
        assert!(matches!(d(b"$10\r\n0123456789\r\n"), Ok(Some(_))));
        assert_eq!(d(b"$99999999999999999999\r\n"), Err(DecodeError::LineTooLong));
        assert_eq!(dec(b"$99999999999999999999\r\n"), Err(DecodeError::BadLength));
        assert_eq!(dec(b"$9999999999999999999\r\n"), Err(DecodeError::BulkTooLarge));
        assert_eq!(d(b"*5\r\n"), Err(DecodeError::TooManyElements));
        assert_eq!(
            d(b"%3\r\n"),
            Err(DecodeError::TooManyElements),
            "a map's pairs count twice"
        );
        assert_eq!(dec(b"*9999999999999999999\r\n"), Err(DecodeError::TooManyElements));
        assert_eq!(d(b"*1\r\n*1\r\n*1\r\n"), Err(DecodeError::TooDeep));
        assert_eq!(d(b"+123456789"), Err(DecodeError::LineTooLong), "no CRLF in sight");
        assert_eq!(d(b"+12345678"), Ok(None));
        assert_eq!(d(b"+123456789\r\n"), Err(DecodeError::LineTooLong));
        // Small bulks adding up past the frame limit: refused before the rest arrives.
        let mut many = b"*4\r\n".to_vec();
        for _ in 0..3 {
            many.extend_from_slice(b"$10\r\n0123456789\r\n");
        }
        assert_eq!(d(&many), Ok(None), "55 bytes so far");
        many.extend_from_slice(b"$10\r\n");
        assert_eq!(d(&many), Err(DecodeError::FrameTooLarge));
        // The scanner's own stack caps any configured depth.
        let huge = Limits {
            max_depth: usize::MAX,
            ..Limits::default()
        };
        let mut deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        deep.extend_from_slice(b":0\r\n");
        assert_eq!(decode(&deep, &huge), Err(DecodeError::TooDeep));
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let text = proptest::collection::vec(
            any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
            0..12,
        );
        let leaf = prop_oneof![
            text.clone().prop_map(Value::Simple),
            text.prop_map(Value::Error),
            any::<i64>().prop_map(Value::Integer),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bulk),
            Just(Value::Null),
            any::<bool>().prop_map(Value::Boolean),
            (-1e12f64..1e12).prop_map(Value::Double),
            "-?[1-9][0-9]{0,30}".prop_map(|s| Value::BigNumber(s.into_bytes())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Set),
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Push),
                proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Random garbage: an error or "need more" or a reply within the input, never a
        /// panic; and never a reply longer than what was given.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let limits = Limits { max_frame_bytes: 1024, ..Limits::default() };
            if let Ok(Some((_, used))) = decode(&bytes, &limits) {
                prop_assert!(used > 0 && used <= bytes.len());
            }
        }

        /// Garbage that looks like RESP (type bytes, digits, CRLFs): the same, and it
        /// reaches the deeper paths that random bytes rarely do.
        #[test]
        fn resp_like_garbage_never_panics(parts in proptest::collection::vec(
            prop_oneof![
                Just(&b"*"[..]), Just(&b"%"[..]), Just(&b"$"[..]), Just(&b"|"[..]), Just(&b">"[..]),
                Just(&b"="[..]), Just(&b":"[..]), Just(&b"-1"[..]), Just(&b"2"[..]), Just(&b"\r\n"[..]),
                Just(&b"\n"[..]), Just(&b"t"[..]), Just(&b"_"[..]), Just(&b"99999999999999999999"[..]),
            ], 0..64)) {
            let bytes = parts.concat();
            if let Ok(Some((_, used))) = dec(&bytes) {
                prop_assert!(used > 0 && used <= bytes.len());
            }
        }

        /// Any value tree, encoded, decodes to itself whole and split at any offset.
        #[test]
        fn values_round_trip_at_any_split(values in proptest::collection::vec(arb_value(), 1..4), cut in any::<proptest::sample::Index>()) {
            let mut bytes = Vec::new();
            for v in &values {
                encode_value(&mut bytes, v);
            }
            let cut = cut.index(bytes.len() + 1);
            prop_assert_eq!(split_feed(&bytes, cut, &Limits::default()), values);
        }
    }
}
