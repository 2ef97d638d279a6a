//! The query string of the request target, and the one percent decoder of the crate.
//!
//! - In: a raw query (after `?`, as sent), or any percent-encoded `&str`.
//! - Out: [`percent_decode`], strict: `None` unless every `%` starts an escape of exactly
//!   two ASCII hex digits and the decoded bytes are UTF-8; `+` stays a plus. For path
//!   segments and any other place where a bad escape is the client's error.
//! - Out: the form decoding (`application/x-www-form-urlencoded`) that
//!   [`Request::query_param`] has always done: `+` is a space, a `%` that does not start
//!   a valid escape stays as it is, and bytes that are not UTF-8 become U+FFFD. Lenient
//!   because a token in a query is checked by the auth layer anyway, and browsers
//!   (`URLSearchParams`) decode the same way.
//!
//! Both decoders read escapes with the one scanner here (`Unescape`), so they agree on
//! what an escape is: `%` and two of `0-9 a-f A-F`, nothing else (no sign, no space, no
//! single digit, which `u8::from_str_radix` would let through). They differ only in what
//! they do with a `%` that starts no escape (refuse, or keep) and with `+`. Both borrow
//! when there is nothing to decode; otherwise they allocate at most the input's length.
//!
//! [`Request::query_param`]: super::Request::query_param

use std::borrow::Cow;

/// Decodes `%XX` escapes, strictly: every `%` must be followed by exactly two ASCII hex
/// digits (either case), and the decoded bytes must be UTF-8; otherwise `None`. `+` is
/// left as it is (this is not form decoding). Borrowed when `s` holds no `%`.
///
/// ```
/// use wsgate::proto::handshake::percent_decode;
/// assert_eq!(percent_decode("caf%C3%A9+x").as_deref(), Some("café+x"));
/// assert_eq!(percent_decode("%+f"), None);
/// ```
pub fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = Unescape::new(s)
        .map(|piece| match piece {
            Piece::Literal(byte) | Piece::Escaped(byte) => Some(byte),
            Piece::BadEscape => None,
        })
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok().map(Cow::Owned)
}

/// The first parameter of `query` named `name`, form-decoded; see
/// [`Request::query_param`](super::Request::query_param). Names are form-decoded too and
/// compared byte for byte, without allocating.
pub(super) fn find_param<'b>(query: &'b str, name: &str) -> Option<Cow<'b, str>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| Unescape::new(key).map(form_byte).eq(name.bytes()))
        .map(|(_, value)| form_decode(value))
}

/// Form decoding (`application/x-www-form-urlencoded`) of one value: [`percent_decode`]'s
/// escapes, plus `+` for a space; a `%` that starts no escape is kept, and bytes that are
/// not UTF-8 become U+FFFD. Borrowed when `value` holds neither `%` nor `+`.
pub(super) fn form_decode(value: &str) -> Cow<'_, str> {
    if !value.contains(['%', '+']) {
        return Cow::Borrowed(value);
    }
    let bytes: Vec<u8> = Unescape::new(value).map(form_byte).collect();
    match String::from_utf8(bytes) {
        Ok(decoded) => Cow::Owned(decoded),
        Err(error) => Cow::Owned(String::from_utf8_lossy(error.as_bytes()).into_owned()),
    }
}

/// What one piece of form-encoded text stands for.
fn form_byte(piece: Piece) -> u8 {
    match piece {
        Piece::Literal(b'+') => b' ',
        Piece::Literal(byte) | Piece::Escaped(byte) => byte,
        Piece::BadEscape => b'%',
    }
}

/// One step through percent-encoded text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    /// A byte that stands for itself (anything but a `%`).
    Literal(u8),
    /// The byte a `%XX` escape stands for. Kept apart from [`Piece::Literal`] so that
    /// `%2B` is a plus even where a literal `+` means a space.
    Escaped(u8),
    /// A `%` not followed by two hex digits. Only the `%` is consumed: the bytes after it
    /// come next, as literals.
    BadEscape,
}

/// The pieces of percent-encoded text, in order.
#[derive(Clone, Debug)]
struct Unescape<'a> {
    bytes: &'a [u8],
}

impl<'a> Unescape<'a> {
    fn new(text: &'a str) -> Self {
        Self { bytes: text.as_bytes() }
    }
}

impl Iterator for Unescape<'_> {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        let (&first, rest) = self.bytes.split_first()?;
        let (piece, rest) = match (first, rest) {
            (b'%', [high, low, tail @ ..]) => match (hex_value(*high), hex_value(*low)) {
                (Some(high), Some(low)) => (Piece::Escaped(high << 4 | low), tail),
                _ => (Piece::BadEscape, rest),
            },
            (b'%', _) => (Piece::BadEscape, rest),
            _ => (Piece::Literal(first), rest),
        };
        self.bytes = rest;
        Some(piece)
    }
}

/// One ASCII hex digit, either case. Nothing else: not `+`, `-` or whitespace.
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
    use proptest::prelude::*;

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

    // ---- The strict decoder ----

    #[test]
    fn percent_decode_refuses_anything_but_two_hex_digits() {
        // `%+f` and `%-1` are what `u8::from_str_radix` accepts (a sign, then one digit).
        for bad in [
            "%+f", "%-1", "% 1", "%f", "%", "%zz", "a%", "a%4", "%4g", "%\u{e9}9", "ok%2",
        ] {
            assert_eq!(percent_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn percent_decode_refuses_bytes_that_are_not_utf8() {
        for bad in ["%ff", "%FF", "%C3", "%C3%28", "%E2%82", "%ED%A0%80"] {
            assert_eq!(percent_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn percent_decode_decodes_escapes_in_either_case_and_keeps_plus() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b+c"));
        assert_eq!(percent_decode("%2B%2b").as_deref(), Some("++"));
        assert_eq!(percent_decode("100%25").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%00").as_deref(), Some("\0"));
    }

    #[test]
    fn percent_decode_decodes_multibyte_utf8() {
        assert_eq!(percent_decode("J%C3%BCrgen").as_deref(), Some("J\u{fc}rgen"));
        assert_eq!(percent_decode("%e2%82%ac").as_deref(), Some("\u{20ac}"));
        assert_eq!(percent_decode("%F0%9F%98%80").as_deref(), Some("\u{1f600}"));
        // Literal multi-byte text next to escapes is kept as it is.
        assert_eq!(
            percent_decode("caf\u{e9}%20\u{20ac}").as_deref(),
            Some("caf\u{e9} \u{20ac}")
        );
    }

    #[test]
    fn percent_decode_borrows_when_clean() {
        for clean in ["", "abc", "a+b", "caf\u{e9}", "/api/user/42"] {
            assert!(
                matches!(percent_decode(clean), Some(Cow::Borrowed(s)) if s == clean),
                "{clean:?}"
            );
        }
        assert!(matches!(percent_decode("a%20b"), Some(Cow::Owned(_))));
    }

    #[test]
    fn every_split_of_a_valid_string_decodes_like_the_whole() {
        let encoded = "a%20b+c%C3%BCd%e2%82%ac~\u{e9}%25x%2B";
        let whole = percent_decode(encoded).unwrap();
        assert_eq!(whole, "a b+c\u{fc}d\u{20ac}~\u{e9}%x+");
        // Offsets that fall inside an escape (after its `%`), and how many decoded bytes
        // come before each offset.
        let escapes: Vec<usize> = encoded.match_indices('%').map(|(at, _)| at).collect();
        let inside_escape = |cut: usize| escapes.iter().any(|&at| cut == at + 1 || cut == at + 2);
        let decoded_before = |cut: usize| cut - 2 * escapes.iter().filter(|&&at| at + 3 <= cut).count();
        let mut good_cuts = 0;
        for cut in (0..=encoded.len()).filter(|&cut| encoded.is_char_boundary(cut)) {
            let (head, tail) = encoded.split_at(cut);
            let halves = percent_decode(head).zip(percent_decode(tail));
            // A cut decodes in halves exactly when it falls between escapes and between
            // the characters they spell.
            let expect_good = !inside_escape(cut) && whole.is_char_boundary(decoded_before(cut));
            assert_eq!(halves.is_some(), expect_good, "cut {cut}: {head:?} | {tail:?}");
            if let Some((head, tail)) = halves {
                assert_eq!(format!("{head}{tail}"), whole, "cut {cut}");
                good_cuts += 1;
            }
        }
        assert!(good_cuts > 10, "{good_cuts}");
    }

    /// Percent-encodes `bytes`: each at a position `escape` marks, and every `%` and
    /// non-ASCII byte, in the case `upper` says. The reference the decoder is checked
    /// against.
    fn encode(bytes: &[u8], escape: &[bool], upper: bool) -> String {
        let mut out = String::new();
        for (i, &byte) in bytes.iter().enumerate() {
            if escape.get(i).copied().unwrap_or(true) || byte == b'%' || !byte.is_ascii() {
                out.push_str(&if upper {
                    format!("%{byte:02X}")
                } else {
                    format!("%{byte:02x}")
                });
            } else {
                out.push(char::from(byte));
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn encoded_bytes_decode_back_when_they_are_utf8(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
            escape in prop::collection::vec(any::<bool>(), 64),
            upper in any::<bool>(),
        ) {
            let encoded = encode(&bytes, &escape, upper);
            let decoded = percent_decode(&encoded);
            prop_assert_eq!(decoded.as_deref(), std::str::from_utf8(&bytes).ok());
        }

        #[test]
        fn form_decoding_agrees_with_the_strict_decoder_where_it_succeeds(
            text in "[a-z%+0-9A-F\u{e9}]{0,24}",
        ) {
            // Form decoding is the strict decoder plus `+` for a space: wherever the
            // strict decoder accepts a string, form-decoding it means the same.
            if let Some(strict) = percent_decode(&text.replace('+', "%20")) {
                prop_assert_eq!(form_decode(&text), strict);
            }
        }
    }
}
