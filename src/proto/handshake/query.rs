//! The query string of the request target: finding a parameter and form-decoding it.
//!
//! - In: the raw query (after `?`, as sent) and a parameter name.
//! - Out: the first matching value, decoded the way browsers encode forms
//!   (`application/x-www-form-urlencoded`); borrowed when there is nothing to decode.

use std::borrow::Cow;

/// The first parameter of `query` named `name`, form-decoded; see
/// [`Request::query_param`](super::Request::query_param).
pub(super) fn find_param<'b>(query: &'b str, name: &str) -> Option<Cow<'b, str>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| FormDecoded::new(key).eq(name.bytes()))
        .map(|(_, value)| form_decode(value))
}

/// Decodes `application/x-www-form-urlencoded` bytes one at a time.
struct FormDecoded<'a> {
    bytes: &'a [u8],
}

impl<'a> FormDecoded<'a> {
    fn new(text: &'a str) -> Self {
        Self { bytes: text.as_bytes() }
    }
}

impl Iterator for FormDecoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        let (byte, rest) = match (first, rest) {
            (b'+', _) => (b' ', rest),
            (b'%', [high, low, tail @ ..]) => match (hex_value(*high), hex_value(*low)) {
                (Some(high), Some(low)) => (high << 4 | low, tail),
                _ => (b'%', rest),
            },
            _ => (first, rest),
        };
        self.bytes = rest;
        Some(byte)
    }
}

fn form_decode(value: &str) -> Cow<'_, str> {
    if !value.contains(['%', '+']) {
        return Cow::Borrowed(value);
    }
    let bytes: Vec<u8> = FormDecoded::new(value).collect();
    match String::from_utf8(bytes) {
        Ok(decoded) => Cow::Owned(decoded),
        Err(error) => Cow::Owned(String::from_utf8_lossy(error.as_bytes()).into_owned()),
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::handshake::testutil::*;

    // ---- Query parameters ----

    #[test]
    fn query_param_percent_decodes_and_treats_plus_as_space() {
        let buf = with_line("GET /ws?token=a%2Bb%20c+d&name=J%C3%BCrgen HTTP/1.1");
        let request = accepted(&buf);
        assert_eq!(request.query_param("token").as_deref(), Some("a+b c d"));
        assert_eq!(request.query_param("name").as_deref(), Some("J\u{fc}rgen"));
    }

    #[test]
    fn query_param_returns_first_match_and_none_when_absent() {
        let buf = with_line("GET /ws?a=1&a=2&flag&&b= HTTP/1.1");
        let request = accepted(&buf);
        assert_eq!(request.query_param("a").as_deref(), Some("1"));
        assert_eq!(request.query_param("flag").as_deref(), Some(""));
        assert_eq!(request.query_param("b").as_deref(), Some(""));
        assert_eq!(request.query_param("c"), None);
        assert_eq!(accepted(&minimal()).query_param("a"), None);
    }

    #[test]
    fn query_param_borrows_when_nothing_to_decode() {
        let buf = with_line("GET /ws?token=abc.def-ghi HTTP/1.1");
        assert!(matches!(
            accepted(&buf).query_param("token"),
            Some(Cow::Borrowed("abc.def-ghi"))
        ));
    }

    #[test]
    fn query_param_keeps_invalid_escapes_and_replaces_invalid_utf8() {
        let buf = with_line("GET /ws?a=100%&b=%zz%4&c=%FF HTTP/1.1");
        let request = accepted(&buf);
        assert_eq!(request.query_param("a").as_deref(), Some("100%"));
        assert_eq!(request.query_param("b").as_deref(), Some("%zz%4"));
        assert_eq!(request.query_param("c").as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn query_param_names_are_decoded() {
        let buf = with_line("GET /ws?my+key=1&x%5Fy=2 HTTP/1.1");
        let request = accepted(&buf);
        assert_eq!(request.query_param("my key").as_deref(), Some("1"));
        assert_eq!(request.query_param("x_y").as_deref(), Some("2"));
    }
}
