//! The list grammars of the two WebSocket headers that carry lists (RFC 9110 section
//! 5.6.1: elements separated by `,`, empty elements skipped).
//!
//! - `Sec-WebSocket-Protocol`: `1#token` (RFC 6455 section 4.3). `ProtocolScan` checks
//!   each line at parse time and keeps the offered protocol the server prefers most.
//! - `Sec-WebSocket-Extensions`: `1#extension`, with `extension = token *( ";" param )`
//!   and `param = token [ "=" ( token / quoted-string ) ]` (RFC 6455 section 9.1).
//!   `ExtensionScan` checks each line at parse time; `ExtensionList` walks a line again
//!   when [`Request::extensions`] asks, and yields [`Extension`]s whose parameters
//!   [`ExtensionParams`] parses on demand.
//!
//! In: header values, already trimmed. Out: malformed or not, the selected protocol, and
//! views borrowing the value; nothing is stored per element.
//!
//! [`Request::extensions`]: super::Request::extensions

use std::borrow::Cow;

use super::syntax::{is_tchar, trim_ows};

/// One offered extension: `name *( ";" param )` (RFC 6455 section 9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extension<'b> {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: &'b str,
    /// The validated `; param[=value]` text after the name, parsed on demand by
    /// [`Extension::params`] so an extension costs no storage.
    params: &'b str,
}

impl<'b> Extension<'b> {
    /// The parameters, in order, as (name, value). A quoted value is unquoted: borrowed
    /// unless it held backslash escapes.
    pub fn params(&self) -> ExtensionParams<'b> {
        ExtensionParams {
            cursor: Cursor::new(self.params),
        }
    }
}

/// Iterator over the parameters of an [`Extension`].
#[derive(Clone, Debug)]
pub struct ExtensionParams<'b> {
    cursor: Cursor<'b>,
}

impl<'b> Iterator for ExtensionParams<'b> {
    type Item = (&'b str, Option<Cow<'b, str>>);

    fn next(&mut self) -> Option<Self::Item> {
        self.cursor.skip_ows();
        if !self.cursor.eat(b';') {
            return None;
        }
        match param(&mut self.cursor) {
            Some((name, value)) => Some((name, value.map(ParamValue::unescape))),
            None => {
                // Unreachable for a validated extension; stop rather than loop.
                self.cursor.pos = self.cursor.text.len();
                None
            }
        }
    }
}

/// `Sec-WebSocket-Protocol` over all its lines: `1#token` (RFC 6455 section 4.3).
#[derive(Default)]
pub(super) struct ProtocolScan<'b> {
    lines: usize,
    tokens: usize,
    malformed: bool,
    /// The offered token we prefer most so far, with its rank in the config.
    pub(super) best: Option<(usize, &'b [u8])>,
}

impl<'b> ProtocolScan<'b> {
    pub(super) fn scan(&mut self, value: &'b [u8], supported: &[String]) {
        self.lines += 1;
        for element in value.split(|&b| b == b',') {
            let token = trim_ows(element);
            // RFC 9110 section 5.6.1.2: empty elements are accepted and not counted.
            if token.is_empty() {
                continue;
            }
            if !token.iter().all(|&b| is_tchar(b)) {
                self.malformed = true;
                return;
            }
            self.tokens += 1;
            let rank = supported.iter().position(|name| name.as_bytes() == token);
            if let Some(rank) = rank
                && self.best.is_none_or(|(best, _)| rank < best)
            {
                self.best = Some((rank, token));
            }
        }
    }

    /// Malformed, or present with no token at all (`1#` needs one).
    pub(super) fn is_malformed(&self) -> bool {
        self.malformed || (self.lines > 0 && self.tokens == 0)
    }
}

/// `Sec-WebSocket-Extensions` over all its lines: `1#extension`.
#[derive(Default)]
pub(super) struct ExtensionScan {
    lines: usize,
    extensions: usize,
    malformed: bool,
}

impl ExtensionScan {
    pub(super) fn scan(&mut self, value: &[u8]) {
        self.lines += 1;
        let Ok(value) = std::str::from_utf8(value) else {
            self.malformed = true;
            return;
        };
        for extension in ExtensionList::new(value) {
            if extension.is_err() {
                self.malformed = true;
                return;
            }
            self.extensions += 1;
        }
    }

    pub(super) fn is_malformed(&self) -> bool {
        self.malformed || (self.lines > 0 && self.extensions == 0)
    }
}

/// The extension list did not follow RFC 6455 section 9.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// The extensions of one `Sec-WebSocket-Extensions` line (a request's offers, or a
/// response's agreement). Yields `Err` once, at the first malformed element, then
/// stops.
pub struct ExtensionList<'b> {
    cursor: Cursor<'b>,
    done: bool,
}

impl<'b> ExtensionList<'b> {
    /// The extensions of the header value `value`.
    pub fn new(value: &'b str) -> Self {
        Self {
            cursor: Cursor::new(value),
            done: false,
        }
    }

    /// `extension-token *( ";" extension-param )`, and the `,` after it if any.
    fn extension(&mut self) -> Result<Extension<'b>, Malformed> {
        let name = self.cursor.token().ok_or(Malformed)?;
        let params_start = self.cursor.pos;
        let mut params_end = params_start;
        loop {
            self.cursor.skip_ows();
            match self.cursor.peek() {
                None => break,
                Some(b',') => {
                    self.cursor.pos += 1;
                    break;
                }
                Some(b';') => {
                    self.cursor.pos += 1;
                    param(&mut self.cursor).ok_or(Malformed)?;
                    params_end = self.cursor.pos;
                }
                Some(_) => return Err(Malformed),
            }
        }
        Ok(Extension {
            name,
            params: self.cursor.text.get(params_start..params_end).unwrap_or(""),
        })
    }
}

impl<'b> Iterator for ExtensionList<'b> {
    type Item = Result<Extension<'b>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        // RFC 9110 section 5.6.1.2: skip empty list elements.
        loop {
            self.cursor.skip_ows();
            if !self.cursor.eat(b',') {
                break;
            }
        }
        if self.cursor.peek().is_none() {
            self.done = true;
            return None;
        }
        let extension = self.extension();
        self.done = extension.is_err();
        Some(extension)
    }
}

/// An extension parameter value as written: a token, or the inside of a quoted string.
#[derive(Clone, Copy, Debug)]
struct ParamValue<'b> {
    text: &'b str,
    /// The quoted string held `\` escapes, so the text must be unescaped.
    escaped: bool,
}

impl<'b> ParamValue<'b> {
    fn unescape(self) -> Cow<'b, str> {
        if self.escaped {
            // Validation allowed only `\` followed by a tchar, so dropping every `\`
            // is the whole unescaping.
            Cow::Owned(self.text.chars().filter(|&c| c != '\\').collect())
        } else {
            Cow::Borrowed(self.text)
        }
    }
}

/// `extension-param = token [ "=" (token | quoted-string) ]`, the `;` already eaten.
/// Whitespace is allowed around `=` (RFC 6455 uses RFC 2616's implied `*LWS`).
fn param<'b>(cursor: &mut Cursor<'b>) -> Option<(&'b str, Option<ParamValue<'b>>)> {
    cursor.skip_ows();
    let name = cursor.token()?;
    let mut ahead = cursor.clone();
    ahead.skip_ows();
    if !ahead.eat(b'=') {
        return Some((name, None));
    }
    ahead.skip_ows();
    let value = if ahead.peek() == Some(b'"') {
        ahead.quoted_token()?
    } else {
        ParamValue {
            text: ahead.token()?,
            escaped: false,
        }
    };
    *cursor = ahead;
    Some((name, Some(value)))
}

/// A position in a header value. It only ever steps over ASCII bytes, so every
/// position it slices at is a char boundary.
#[derive(Clone, Debug)]
struct Cursor<'b> {
    text: &'b str,
    pos: usize,
}

impl<'b> Cursor<'b> {
    fn new(text: &'b str) -> Self {
        Self { text, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let matched = self.peek() == Some(byte);
        self.pos += usize::from(matched);
        matched
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// `1*tchar`.
    fn token(&mut self) -> Option<&'b str> {
        let start = self.pos;
        let rest = self.text.as_bytes().get(start..)?;
        let len = rest.iter().position(|&b| !is_tchar(b)).unwrap_or(rest.len());
        self.pos += len;
        self.text.get(start..self.pos).filter(|token| !token.is_empty())
    }

    /// A quoted string whose content, unescaped, is a token (RFC 6455 section 9.1:
    /// "the value after quoted-string unescaping MUST conform to the 'token' ABNF").
    fn quoted_token(&mut self) -> Option<ParamValue<'b>> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.pos;
        let mut escaped = false;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.pos += 1;
                    if !self.peek().is_some_and(is_tchar) {
                        return None;
                    }
                    self.pos += 1;
                }
                byte if is_tchar(byte) => self.pos += 1,
                _ => return None,
            }
        }
        let text = self.text.get(start..self.pos)?;
        self.pos += 1; // the closing quote
        (!text.is_empty()).then_some(ParamValue { text, escaped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::handshake::testutil::*;

    // ---- item 8 and section 4.2.2: subprotocols ----

    #[test]
    fn selects_subprotocol_by_server_preference() {
        // The client lists chat.v1 first; the server prefers chat.v2.
        let buf = with(&[("Sec-WebSocket-Protocol", "chat.v1, chat.v2")]);
        assert_eq!(accepted(&buf).selected_protocol(), Some("chat.v2"));
        let buf = with(&[("Sec-WebSocket-Protocol", "mqtt, chat.v1")]);
        assert_eq!(accepted(&buf).selected_protocol(), Some("chat.v1"));
    }

    #[test]
    fn selected_protocol_is_none_when_nothing_matches() {
        let buf = with(&[("Sec-WebSocket-Protocol", "mqtt, stomp")]);
        let request = accepted(&buf);
        assert_eq!(request.selected_protocol(), None);
        assert_eq!(request.offered_protocols().collect::<Vec<_>>(), ["mqtt", "stomp"]);
        let buf = with(&[("Sec-WebSocket-Protocol", "chat.v1")]);
        let request = parse_with(&buf, &HandshakeConfig::default()).unwrap().unwrap();
        assert_eq!(request.selected_protocol(), None);
    }

    #[test]
    fn offered_protocols_span_repeated_headers() {
        let buf = with(&[
            ("Sec-WebSocket-Protocol", "mqtt"),
            ("sec-websocket-protocol", "stomp,chat.v1"),
        ]);
        let request = accepted(&buf);
        assert_eq!(
            request.offered_protocols().collect::<Vec<_>>(),
            ["mqtt", "stomp", "chat.v1"]
        );
        assert_eq!(request.selected_protocol(), Some("chat.v1"));
    }

    #[test]
    fn subprotocol_match_is_case_sensitive() {
        let buf = with(&[("Sec-WebSocket-Protocol", "CHAT.V2")]);
        assert_eq!(accepted(&buf).selected_protocol(), None);
    }

    #[test]
    fn empty_protocol_header_is_400() {
        for value in ["", ",", " , ,"] {
            let buf = with(&[("Sec-WebSocket-Protocol", value)]);
            assert_eq!(rejected(&buf), HandshakeError::MalformedProtocols, "{value:?}");
        }
    }

    #[test]
    fn malformed_protocol_token_is_400() {
        for value in ["chat v2", "chat;v2", "\"chat\"", "chat/2", "chat=1", "ch\u{e9}t"] {
            let buf = with(&[("Sec-WebSocket-Protocol", value)]);
            assert_eq!(rejected(&buf), HandshakeError::MalformedProtocols, "{value:?}");
        }
    }

    #[test]
    fn empty_protocol_list_elements_are_ignored() {
        let buf = with(&[("Sec-WebSocket-Protocol", ", mqtt,, chat.v1 ,")]);
        let request = accepted(&buf);
        assert_eq!(request.offered_protocols().collect::<Vec<_>>(), ["mqtt", "chat.v1"]);
        assert_eq!(request.selected_protocol(), Some("chat.v1"));
    }

    // ---- item 9 and section 9.1: extensions ----

    #[test]
    fn extensions_are_parsed_with_params() {
        let buf = with(&[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits; server_max_window_bits=10, x-foo",
        )]);
        let request = accepted(&buf);
        let extensions: Vec<Extension<'_>> = request.extensions().collect();
        assert_eq!(extensions.len(), 2);
        assert_eq!(extensions[0].name, "permessage-deflate");
        let params: Vec<_> = extensions[0].params().collect();
        assert_eq!(
            params,
            [
                ("client_max_window_bits", None),
                ("server_max_window_bits", Some(Cow::Borrowed("10"))),
            ]
        );
        assert_eq!(extensions[1].name, "x-foo");
        assert_eq!(extensions[1].params().count(), 0);
    }

    #[test]
    fn quoted_extension_values_are_unquoted() {
        let buf = with(&[("Sec-WebSocket-Extensions", r#"x; a="10"; b = "1\0" ; c"#)]);
        let request = accepted(&buf);
        let extension = request.extensions().next().unwrap();
        let params: Vec<_> = extension.params().collect();
        assert_eq!(params.len(), 3);
        assert!(matches!(params[0], ("a", Some(Cow::Borrowed("10")))));
        assert!(matches!(&params[1], ("b", Some(Cow::Owned(value))) if value == "10"));
        assert_eq!(params[2], ("c", None));
    }

    #[test]
    fn extensions_span_repeated_headers() {
        let buf = with(&[
            ("Sec-WebSocket-Extensions", "a"),
            ("Sec-WebSocket-Extensions", "b;x, c"),
        ]);
        let names: Vec<&str> = accepted(&buf).extensions().map(|e| e.name).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn well_formed_extension_variants_are_accepted() {
        for value in [
            "a",
            "a;b",
            "a ; b = c",
            "a;b=\"c\"",
            "a, , b",
            ", a",
            "a;\tb=1\t,\tc",
            "a;b=\"\\c\"",
        ] {
            let buf = with(&[("Sec-WebSocket-Extensions", value)]);
            assert!(parse(&buf).unwrap().is_some(), "{value:?}");
        }
    }

    #[test]
    fn malformed_extensions_get_400() {
        for value in [
            "",
            ",",
            ";",
            "a;",
            "a;=1",
            "a;b=",
            "a b",
            "a;b=c d",
            "a;b=\"\"",
            "a;b=\"c d\"",
            "a;b=\"c",
            "a;b=\"c\\",
            "a;b=\"c\\ \"",
            "a;b=c=d",
            "a;b=\"c\"d",
            "=a",
            "a;b=\"c,d\"",
            "\u{e9}",
        ] {
            let buf = with(&[("Sec-WebSocket-Extensions", value)]);
            assert_eq!(rejected(&buf), HandshakeError::MalformedExtensions, "{value:?}");
        }
    }
}
