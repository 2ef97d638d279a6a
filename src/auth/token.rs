//! The JWT compact form (RFC 7519, RFC 7515 section 7.1): split, decode the header and
//! the claims. No crypto and no policy here; [`super::Authenticator`] decides.
//!
//! Parsed by hand rather than with jsonwebtoken's `decode` so that every failure maps to
//! one [`AuthError`], `alg: none` is refused as an algorithm (jsonwebtoken cannot even
//! parse it), time is the `now` the caller passes (jsonwebtoken reads the system clock),
//! and a claim of the wrong JSON type is an error rather than "absent" (the mistake
//! behind CVE-2026-25537).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer};

use super::AuthError;

/// The three segments of a compact JWS, still base64url.
#[derive(Clone, Copy)]
pub(super) struct Segments<'t> {
    /// `header.payload`: the bytes the signature covers.
    pub(super) signing_input: &'t str,
    pub(super) header: &'t str,
    pub(super) payload: &'t str,
    pub(super) signature: &'t str,
}

/// Splits a token into its three segments. Each must be base64url without padding
/// (RFC 7515 section 2), header and payload non-empty; the signature may be empty here
/// (an unsigned token) and is refused after the algorithm check.
pub(super) fn split(token: &str) -> Result<Segments<'_>, AuthError> {
    let (signing_input, signature) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(AuthError::Malformed)?;
    if header.is_empty() || payload.is_empty() {
        return Err(AuthError::Malformed);
    }
    let base64url = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !(base64url(header) && base64url(payload) && base64url(signature)) {
        // Also catches a fourth segment (a '.' in the payload) and JWE's five.
        return Err(AuthError::Malformed);
    }
    Ok(Segments {
        signing_input,
        header,
        payload,
        signature,
    })
}

/// Decodes a base64url segment.
pub(super) fn decode_segment(segment: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD.decode(segment).map_err(|_| AuthError::Malformed)
}

/// The JOSE header members we read (RFC 7515 section 4.1). `typ` and `cty` are
/// ignored: issuers disagree on them (`JWT`, `at+jwt`, none).
#[derive(Deserialize)]
pub(super) struct Header {
    /// The algorithm, as named in the token. Checked against the allowed set before any
    /// key is touched.
    pub(super) alg: String,
    /// Which key signed it, if the issuer says.
    pub(super) kid: Option<String>,
    /// Extensions the recipient must understand (RFC 7515 section 4.1.11). We
    /// understand none, so a token that has any is refused.
    pub(super) crit: Option<IgnoredAny>,
}

/// The claims we read. Unknown claims are ignored; a known one of the wrong type, or
/// given twice, fails the whole token (`malformed`).
#[derive(Deserialize)]
pub(super) struct Claims {
    /// Subject: the user id.
    pub(super) sub: Option<String>,
    /// Expiry (required, checked by the caller).
    pub(super) exp: Option<NumericDate>,
    /// Not before.
    pub(super) nbf: Option<NumericDate>,
    /// Issuer.
    pub(super) iss: Option<String>,
    /// Audience: one string or an array (RFC 7519 section 4.1.3).
    pub(super) aud: Option<Audience>,
    /// Rooms the user may join (names, or prefixes ending in `*`).
    pub(super) join: Option<Vec<String>>,
    /// Rooms the user may publish to.
    pub(super) publish: Option<Vec<String>>,
}

/// Parses the claims from the decoded payload.
pub(super) fn parse_claims(payload: &[u8]) -> Result<Claims, AuthError> {
    serde_json::from_slice(payload).map_err(|_| AuthError::Malformed)
}

/// Parses the header from the decoded first segment.
pub(super) fn parse_header(header: &[u8]) -> Result<Header, AuthError> {
    serde_json::from_slice(header).map_err(|_| AuthError::Malformed)
}

/// A JWT NumericDate (RFC 7519 section 2): seconds since 1970, possibly fractional,
/// kept as whole seconds (a fraction is dropped: at most one second earlier for `exp`
/// and `nbf` alike, far inside the leeway). Out-of-range values saturate. Anything but
/// a JSON number is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct NumericDate(pub(super) i64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumberOfSeconds;

        impl Visitor<'_> for NumberOfSeconds {
            type Value = NumericDate;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of seconds since 1970")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumericDate, E> {
                Ok(NumericDate(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumericDate, E> {
                Ok(NumericDate(i64::try_from(v).unwrap_or(i64::MAX)))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumericDate, E> {
                if v.is_finite() {
                    // `as` saturates at the i64 range.
                    Ok(NumericDate(v.floor() as i64))
                } else {
                    Err(E::custom("not a finite number"))
                }
            }
        }

        deserializer.deserialize_any(NumberOfSeconds)
    }
}

/// The `aud` claim.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Audience {
    /// `"aud": "wsgate"`.
    One(String),
    /// `"aud": ["wsgate", "api"]`.
    Many(Vec<String>),
}

impl Audience {
    /// Whether `audience` is among the token's audiences (exact, case-sensitive: RFC 7519
    /// section 4.1.3 compares StringOrURI values as strings).
    pub(super) fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(one) => one == audience,
            Audience::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

/// Whole seconds since 1970, rounded down (so a `now` 0.4 s before a deadline counts
/// as before it), negative before 1970.
pub(super) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            -whole - i64::from(before.subsec_nanos() > 0)
        }
    }
}

/// The instant `secs` seconds after 1970, clamped to ±2^40 s (about 35,000 years) so
/// that the conversion cannot overflow on any platform.
pub(super) fn system_time(secs: i64) -> SystemTime {
    const LIMIT: i64 = 1 << 40;
    let secs = secs.clamp(-LIMIT, LIMIT);
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}
