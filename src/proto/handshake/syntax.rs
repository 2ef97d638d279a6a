//! The byte-level syntax of HTTP fields (RFC 9110 section 5.6) the other files share:
//! token bytes, field-value bytes, host bytes, and optional whitespace.
//!
//! In: a byte or a string. Out: whether it belongs to the class, or the string with
//! the whitespace around it removed. Lookup tables built at compile time.

/// `uri-host [ ":" port ]` at the byte level: reg-name, IPv4 and IP-literal bytes
/// (RFC 3986 section 3.2.2). Refuses what no host holds: whitespace, `/`, `@`, `?`, ...
pub(super) fn is_valid_host(host: &str) -> bool {
    !host.is_empty() && host.bytes().all(|b| HOST_BYTES[usize::from(b)])
}

/// RFC 9110 section 5.6.2.
pub(super) fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

const ALPHANUMERIC: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// `tchar`: the bytes of a token (RFC 9110 section 5.6.2).
static TCHAR: [bool; 256] = byte_set(ALPHANUMERIC, b"!#$%&'*+-.^_`|~");
/// Unreserved, pct-encoded, sub-delims, `:` and the brackets of an IP literal.
static HOST_BYTES: [bool; 256] = byte_set(ALPHANUMERIC, b"-._~%!$&'()*+,;=:[]");

const fn byte_set(first: &[u8], second: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut i = 0;
    while i < first.len() {
        set[first[i] as usize] = true;
        i += 1;
    }
    let mut i = 0;
    while i < second.len() {
        set[second[i] as usize] = true;
        i += 1;
    }
    set
}

pub(super) fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(is_tchar)
}

/// `field-value` bytes: HTAB, SP, VCHAR, obs-text; no CR, LF or other control byte.
pub(super) fn is_field_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

/// Strips optional whitespace (SP, HTAB) from both ends (RFC 9110 section 5.6.3).
pub(super) fn trim_ows(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|&b| b != b' ' && b != b'\t');
    let Some(start) = start else {
        return &[];
    };
    let end = value
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |end| end + 1);
    &value[start..end]
}

pub(super) fn trim_ows_str(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
}
