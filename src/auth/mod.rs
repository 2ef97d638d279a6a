//! Token authentication before the upgrade: who is this client, and may it connect.
//!
//! The handshake layer ([`crate::proto::handshake`]) validates the upgrade request; this
//! module then decides whether the request carries a valid token and, if so, who the
//! user is. It does no I/O on the connection path: [`Authenticator::new`] reads the key
//! files once at start-up, and [`Authenticator::authenticate`] looks only at the parsed
//! [`Request`] and the `now` the caller passes in, so it is tested on plain values like
//! the rest of `proto`.
//!
//! # Data flow
//!
//! - Start-up: [`AuthConfig`] (flags, environment, TOML) → [`Authenticator::new`] →
//!   one `Authenticator`, shared read-only by every shard (`Arc<Authenticator>`; it is
//!   `Send + Sync`), or an [`AuthConfigError`] naming the option or file at fault.
//! - Per upgrade: `authenticate(&request, now)` → [`Identity`] (send the 101), or an
//!   [`AuthError`]: what the caller answers (`server::admission` writes the 401 with
//!   [`AuthError::reason`] and [`AuthError::www_authenticate`]); auth writes no HTTP.
//! - Tooling: [`mint`] signs tokens; [`TokenArgs`] and [`run_token`] are the
//!   `wsgate token` subcommand.
//!
//! # Where the token comes from
//!
//! The first carrier that holds a token wins; the others are not looked at.
//!
//! | # | carrier | form | who uses it |
//! |---|---|---|---|
//! | 1 | `Authorization` header | `Bearer <token>` (scheme case-insensitive, RFC 6750 section 2.1) | servers, mobile apps, anything that can set headers |
//! | 2 | query parameter | `?token=<token>` ([`AuthConfig::query_param`]) | browsers |
//! | 3 | `Sec-WebSocket-Protocol` | an offered subprotocol `bearer.<token>` ([`SUBPROTOCOL_PREFIX`], [`AuthConfig::subprotocol_carrier`]) | browsers that keep tokens out of URLs |
//!
//! An `Authorization` header with another scheme (`Basic ...`, which browsers replay on
//! their own for a site behind HTTP auth) is not ours and is skipped, so a token in the
//! query still works behind such a site. `Bearer` with nothing usable after it is
//! `malformed`, as is an empty query value or an empty `bearer.` protocol.
//!
//! Why `bearer.<token>` and not the pair `access_token, <token>`: one element carries
//! both the marker and the token, so nothing depends on the order of the offered list,
//! and the element can never be mistaken for a real protocol name. A JWT is base64url
//! segments joined by `.`, all HTTP token characters, so it is a valid protocol element
//! as it is. Chromium fails a connection whose 101 selects no protocol when it offered
//! some, so a browser offers the application's protocol too:
//! `new WebSocket(url, ["chat.v1", "bearer." + token])`, with `chat.v1` in the server's
//! `subprotocols`. The token element itself is never selected: the handshake selects only
//! names listed in `subprotocols`, and [`check_subprotocols`] refuses a configured name
//! that starts with `bearer.`.
//!
//! A token in a URL ends up in proxy and access logs; prefer the header, then the
//! subprotocol. Tokens are short-lived for this reason too.
//!
//! # What is checked, in order
//!
//! The first failing check decides the error. Nothing about the claims is looked at
//! before the signature is verified, so an unsigned or forged token only ever learns
//! that its signature (or algorithm) is wrong.
//!
//! | # | check | error |
//! |---|---|---|
//! | 1 | a carrier holds a token | [`AuthError::Missing`] (or `Malformed` for an empty one) |
//! | 2 | at most [`MAX_TOKEN_BYTES`] | [`AuthError::TokenTooLarge`] |
//! | 3 | three base64url segments, header is a JSON object with `alg` | [`AuthError::Malformed`] |
//! | 4 | `alg` is in the allowed set (never `none`) | [`AuthError::AlgorithmNotAllowed`] |
//! | 5 | no `crit` header | [`AuthError::Malformed`] |
//! | 6 | a configured key fits `alg` (and `kid`, see below) | [`AuthError::UnknownKey`] |
//! | 7 | one of those keys verifies the signature | [`AuthError::BadSignature`] |
//! | 8 | claims are a JSON object, known claims of the right type | [`AuthError::Malformed`] |
//! | 9 | `exp` present | [`AuthError::MissingExpiry`] |
//! | 10 | `now < exp + leeway` | [`AuthError::Expired`] |
//! | 11 | `nbf` absent or `now >= nbf - leeway` | [`AuthError::NotYetValid`] |
//! | 12 | `iss` equals [`AuthConfig::issuer`], if configured | [`AuthError::WrongIssuer`] |
//! | 13 | `aud` holds [`AuthConfig::audience`] if configured; no `aud` if not | [`AuthError::WrongAudience`] |
//! | 14 | `sub` present and non-empty | [`AuthError::MissingSubject`] |
//! | 15 | `sub` at most [`MAX_USER_ID_BYTES`], no control characters | [`AuthError::InvalidSubject`] |
//! | 16 | `join`, `publish` well formed | [`AuthError::InvalidRights`] |
//!
//! Key choice: only keys whose type fits the algorithm are candidates (an HMAC secret
//! never verifies an RSA or EC token, an RSA key never serves as an HMAC secret). If the
//! token names a `kid` that a configured key has, only that key is tried; if it names
//! one no key has, only keys without a `kid` (PEM keys, the HMAC secret) are tried; with
//! no `kid`, every candidate is tried in configuration order.
//!
//! A token with `aud` is refused when no audience is configured (RFC 7519 section
//! 4.1.3: a recipient that does not identify itself with the audience must reject the
//! token), so a token issued for another service cannot be replayed here.
//!
//! # Claims
//!
//! | claim | type | meaning |
//! |---|---|---|
//! | `sub` | string | the user id ([`Identity::user_id`]), required |
//! | `exp` | number | expiry, seconds since 1970, required ([`Identity::expires_at`]) |
//! | `nbf` | number | not valid before, optional |
//! | `iss` | string | issuer, checked if [`AuthConfig::issuer`] is set |
//! | `aud` | string or array | audience, see above |
//! | `join` | array of strings | rooms the user may join ([`Identity::can_join`]) |
//! | `publish` | array of strings | rooms the user may publish to ([`Identity::can_publish`]) |
//!
//! A `join` or `publish` entry is a room name (`lobby`), or a prefix ending in `*`
//! (`team-42.*` covers `team-42.general`; `*` alone covers every room). A `*` anywhere
//! else is refused, not taken literally. An absent claim does not restrict: the token
//! only authenticates, and room policy is the server's; an empty array allows nothing.
//! At most [`MAX_RIGHTS_ENTRIES`] entries of at most [`MAX_ROOM_PATTERN_BYTES`] each.
//!
//! # Secrets never leave
//!
//! No error, `Debug` or `Display` in this module contains a token, a secret or key
//! bytes: [`AuthError`] carries no data, [`Secret`] and everything that holds a raw
//! secret or key print `<redacted>`, and [`AuthConfigError`] names files and options,
//! never their contents. Do not log the [`Request`] itself: its `Debug` shows the raw
//! header bytes, `Authorization` included.
#![forbid(unsafe_code)]

mod keys;
mod mint;
mod token;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

pub use mint::{
    DEFAULT_LIFETIME, LIFETIME_RANGE, MintError, MintKey, MintOptions, TokenArgs, load_key, mint, run_token,
};

use crate::proto::handshake::{Request, Status};
use keys::{KeyKind, VerifyingKey};

/// The realm of every `WWW-Authenticate` challenge we send.
pub const REALM: &str = "wsgate";

/// Default for [`AuthConfig::leeway`]: covers the clock skew between the token issuer
/// and us (NTP keeps it well under a second; 30 s also covers a client that fetched a
/// token just before it expired and connected just after).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Accepted [`AuthConfig::leeway`]. More than five minutes would keep an expired token
/// usable that long.
pub const LEEWAY_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(300);
/// Default for [`AuthConfig::query_param`].
pub const DEFAULT_QUERY_PARAM: &str = "token";
/// The subprotocol carrier: an offered `Sec-WebSocket-Protocol` element
/// `bearer.<token>` carries the token (see the module docs).
pub const SUBPROTOCOL_PREFIX: &str = "bearer.";
/// In [`AuthMode::None`], the query parameter that names the anonymous user
/// (`?user=alice`), so a benchmark can run many distinct users.
pub const ANONYMOUS_USER_PARAM: &str = "user";

/// Longest token accepted, in bytes. A signed JWT with an RS512 signature and a few
/// dozen room patterns is about 2 KiB; 8 KiB leaves room and bounds the base64 and JSON
/// work an attacker can cause per handshake (the header limit bounds it too, but may be
/// raised to 1 MiB). Beyond: `token_too_large`, before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest user id (`sub`), in bytes. User ids are kept per connection and appear in
/// logs and room member lists, so they stay small. Beyond: `invalid_subject`.
pub const MAX_USER_ID_BYTES: usize = 256;
/// Most entries in one `join` or `publish` claim. Each connection keeps its rights, so
/// they are bounded; a user who needs more rooms needs a prefix. Beyond:
/// `invalid_rights`.
pub const MAX_RIGHTS_ENTRIES: usize = 256;
/// Longest room name or pattern in `join` or `publish`, in bytes. Beyond:
/// `invalid_rights`.
pub const MAX_ROOM_PATTERN_BYTES: usize = 256;
/// Most verifying keys (all files together, the HMAC secret included). A token without
/// `kid` may be tried against every key of its algorithm, so this bounds the signature
/// checks one handshake can cost. Beyond: a start-up error.
pub const MAX_KEYS: usize = 32;
/// Largest key or secret file read, in bytes. Key files are a few KiB; the bound makes
/// a mistyped path (a log, `/dev/zero`) fail at once. Beyond: a start-up error.
pub const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;
/// Shortest HMAC secret for HS256, in bytes: RFC 7518 section 3.2 asks for a key at
/// least as long as the hash (HS384: 48, HS512: 64). Shorter: a start-up error.
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Longest [`AuthConfig::query_param`] name.
pub const MAX_QUERY_PARAM_NAME_BYTES: usize = 64;

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// Whether upgrades need a token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AuthMode {
    /// No authentication: every upgrade gets an anonymous [`Identity`]. For local
    /// benchmarks only; it must be asked for by name, and the server warns loudly at
    /// start-up.
    None,
    /// Every upgrade needs a valid JWT. The default, so a gateway cannot be started
    /// open by forgetting an option: with no key configured it refuses to start.
    #[default]
    Jwt,
}

impl AuthMode {
    /// The config spelling: `none` or `jwt`.
    pub const fn name(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Jwt => "jwt",
        }
    }
}

impl FromStr for AuthMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(AuthMode::None),
            "jwt" => Ok(AuthMode::Jwt),
            _ => Err("jwt or none".to_owned()),
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A JWS signature algorithm (RFC 7518 section 3.1, RFC 8037 for EdDSA). `none` is not
/// one of them: an unsigned token is never accepted. `Debug` and `Display` print the
/// JWA name (`HS256`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC with SHA-256 and a shared secret.
    Hs256,
    /// HMAC with SHA-384.
    Hs384,
    /// HMAC with SHA-512.
    Hs512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// EdDSA (Ed25519).
    EdDsa,
}

impl Algorithm {
    /// Every algorithm, in the order of the enum.
    pub const ALL: [Algorithm; 12] = [
        Algorithm::Hs256,
        Algorithm::Hs384,
        Algorithm::Hs512,
        Algorithm::Rs256,
        Algorithm::Rs384,
        Algorithm::Rs512,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::EdDsa,
    ];

    /// The JWA name, as in a token's `alg` header: `HS256`, `EdDSA`, ...
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Hs384 => "HS384",
            Algorithm::Hs512 => "HS512",
            Algorithm::Rs256 => "RS256",
            Algorithm::Rs384 => "RS384",
            Algorithm::Rs512 => "RS512",
            Algorithm::Ps256 => "PS256",
            Algorithm::Ps384 => "PS384",
            Algorithm::Ps512 => "PS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    /// The algorithm with this exact JWA name (case-sensitive, as `alg` values are).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Shortest HMAC secret for this algorithm (RFC 7518 section 3.2); 0 for the others.
    const fn min_secret_bytes(self) -> usize {
        match self {
            Algorithm::Hs256 => MIN_HMAC_SECRET_BYTES,
            Algorithm::Hs384 => 48,
            Algorithm::Hs512 => 64,
            _ => 0,
        }
    }

    fn to_jwt(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as J;
        match self {
            Algorithm::Hs256 => J::HS256,
            Algorithm::Hs384 => J::HS384,
            Algorithm::Hs512 => J::HS512,
            Algorithm::Rs256 => J::RS256,
            Algorithm::Rs384 => J::RS384,
            Algorithm::Rs512 => J::RS512,
            Algorithm::Ps256 => J::PS256,
            Algorithm::Ps384 => J::PS384,
            Algorithm::Ps512 => J::PS512,
            Algorithm::Es256 => J::ES256,
            Algorithm::Es384 => J::ES384,
            Algorithm::EdDsa => J::EdDSA,
        }
    }
}

impl FromStr for Algorithm {
    type Err = String;

    /// Config spelling: the JWA name, case-insensitive (`rs256` is `RS256`).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|a| a.name()).collect();
                format!("one of {}", names.join(", "))
            })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of algorithms, one bit each: checked once per handshake, so a bit test.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AlgorithmSet(u16);

const _: () = assert!(Algorithm::ALL.len() <= 16);

impl AlgorithmSet {
    fn of(algorithms: &[Algorithm]) -> Self {
        let mut set = Self::default();
        for &a in algorithms {
            set.insert(a);
        }
        set
    }

    fn insert(&mut self, a: Algorithm) {
        self.0 |= 1 << a as u16;
    }

    fn contains(self, a: Algorithm) -> bool {
        self.0 & (1 << a as u16) != 0
    }

    fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn iter(self) -> impl Iterator<Item = Algorithm> {
        Algorithm::ALL.into_iter().filter(move |&a| self.contains(a))
    }
}

impl fmt::Debug for AlgorithmSet {
    /// `{HS256, RS256}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// A secret value (the HMAC key). Its `Debug` prints `<redacted>`, never the bytes, so
/// a config struct holding one can derive `Debug` safely; there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The secret bytes, for the one place that needs them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s.into_bytes())
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

/// The authentication knobs. Each field is one config key (the `auth_*` keys of
/// [`crate::config::KEYS`]: flag `--auth-mode`, variable `WSGATE_AUTH_MODE`, file key
/// `auth_mode`, ...);
/// [`Authenticator::new`] checks them all and loads the keys.
///
/// `Debug` is derived: the only secret field is a [`Secret`], which redacts itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// `auth_mode`: `jwt` (default) or `none`. With `jwt` and no key configured the
    /// gateway refuses to start, so it is never open by accident; `none` admits
    /// everybody as an anonymous user (benchmarks), with a start-up warning.
    pub mode: AuthMode,
    /// `auth_hmac_secret`: the shared secret for HS256 (HS384/HS512 if allowed), given
    /// inline. Default: none. Prefer `auth_hmac_secret_file`: a flag shows in `ps`, a
    /// variable in `/proc/<pid>/environ`. At least [`MIN_HMAC_SECRET_BYTES`] bytes, or
    /// start-up fails.
    pub hmac_secret: Option<Secret>,
    /// `auth_hmac_secret_file`: a file holding the shared secret (one trailing newline
    /// is dropped). Default: none. Setting both this and `auth_hmac_secret` is an error.
    pub hmac_secret_file: Option<PathBuf>,
    /// `auth_public_key_files`: files of public keys for RS*/PS*, ES256/ES384 and
    /// EdDSA tokens. Each is PEM (`PUBLIC KEY` blocks: RSA, EC P-256/P-384, Ed25519; or
    /// `RSA PUBLIC KEY`), several blocks allowed, or a JWKS JSON file (`{"keys": [...]}`,
    /// or one JWK) as identity providers publish it; JWKs with `"use": "enc"` are
    /// skipped. Default: none. A private key, a certificate or an unsupported key type
    /// is a start-up error naming the file; rotate keys by adding the new one to the
    /// file and restarting (live reload is not built).
    pub public_key_files: Vec<PathBuf>,
    /// `auth_algorithms`: the algorithms a token may use. Default: empty, meaning
    /// derived from the keys (HS256 for the secret, RS256 for RSA keys, ES256/ES384 by
    /// curve, EdDSA, and a JWK's own `alg`). An algorithm listed with no key able to
    /// use it is a start-up error (it catches "HS256 allowed, but only an RSA key").
    /// A token with any other `alg`, `none` included, gets `algorithm_not_allowed`.
    pub algorithms: Vec<Algorithm>,
    /// `auth_issuer`: the `iss` every token must carry, exactly. Default: none (not
    /// checked). Set it when the key signs tokens for several issuers' purposes.
    /// Mismatch or absence: `wrong_issuer`.
    pub issuer: Option<String>,
    /// `auth_audience`: a value the token's `aud` (string or array) must contain.
    /// Default: none, and then a token that has an `aud` is refused (RFC 7519 section
    /// 4.1.3; it was issued for someone else). Mismatch: `wrong_audience`.
    pub audience: Option<String>,
    /// `auth_leeway`: clock skew allowed on `exp` and `nbf`. Default: [`DEFAULT_LEEWAY`]
    /// (30 s); range [`LEEWAY_RANGE`]. A token is accepted until `exp + leeway` and from
    /// `nbf - leeway`.
    pub leeway: Duration,
    /// `auth_query_param`: the query parameter that may carry the token (browsers cannot
    /// set headers on a WebSocket). Default: `token`. `None` disables the carrier (map an
    /// empty value to it). Names are 1 to [`MAX_QUERY_PARAM_NAME_BYTES`] bytes of
    /// `A-Z a-z 0-9 - . _ ~`.
    pub query_param: Option<String>,
    /// `auth_subprotocol_carrier`: whether an offered subprotocol `bearer.<token>` may
    /// carry the token. Default: true. The element is never selected as the connection's
    /// protocol (see [`check_subprotocols`]).
    pub subprotocol_carrier: bool,
}

impl Default for AuthConfig {
    /// `jwt` mode with no key: [`Authenticator::new`] refuses it until a key is given or
    /// `none` is chosen explicitly.
    fn default() -> Self {
        Self {
            mode: AuthMode::Jwt,
            hmac_secret: None,
            hmac_secret_file: None,
            public_key_files: Vec::new(),
            algorithms: Vec::new(),
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
            query_param: Some(DEFAULT_QUERY_PARAM.to_owned()),
            subprotocol_carrier: true,
        }
    }
}

/// Refuses a handshake subprotocol list (`subprotocols` in config.rs) that holds a name
/// starting with [`SUBPROTOCOL_PREFIX`]: the handshake would select it, and echo a
/// client's token back in the 101. Call it next to [`Authenticator::new`].
pub fn check_subprotocols(subprotocols: &[String]) -> Result<(), AuthConfigError> {
    match subprotocols.iter().find(|p| p.starts_with(SUBPROTOCOL_PREFIX)) {
        Some(protocol) => Err(AuthConfigError::Invalid {
            key: "subprotocols",
            problem: format!(
                "{protocol:?} starts with {SUBPROTOCOL_PREFIX:?}, which marks a token carried in \
                 Sec-WebSocket-Protocol; it must never be selected"
            ),
        }),
        None => Ok(()),
    }
}

/// Why the authentication config cannot be used. Every message names the config key or
/// the file, and says what is accepted; none contains a secret or key bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthConfigError {
    /// `auth_mode = jwt` with neither a secret nor a public key file.
    NoKeys,
    /// An option's value is out of range or malformed.
    Invalid {
        /// The config key.
        key: &'static str,
        /// What is wrong and what is accepted.
        problem: String,
    },
    /// A key or secret file cannot be read or parsed.
    File {
        /// The config key that named it.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key's position in the file when there are several.
        problem: String,
    },
    /// An algorithm in `auth_algorithms` that no configured key can verify.
    AlgorithmWithoutKey(Algorithm),
    /// Two keys with the same `kid`: a token naming it would be ambiguous.
    DuplicateKid {
        /// The `kid`.
        kid: String,
    },
    /// More than [`MAX_KEYS`] keys in all.
    TooManyKeys(usize),
}

impl fmt::Display for AuthConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoKeys => write!(
                f,
                "auth_mode is jwt but no key is configured: set auth_hmac_secret_file or \
                 auth_public_key_files, or auth_mode = none (local benchmarks only: anyone may connect)"
            ),
            Self::Invalid { key, problem } => write!(f, "invalid {key}: {problem}"),
            Self::File { key, path, problem } => write!(f, "{key}: {}: {problem}", path.display()),
            Self::AlgorithmWithoutKey(alg) => write!(
                f,
                "auth_algorithms lists {alg}, but no configured key can verify it \
                 (HS* need auth_hmac_secret, RS*/PS* an RSA key, ES256 a P-256 key, ES384 a P-384 key, \
                 EdDSA an Ed25519 key)"
            ),
            Self::DuplicateKid { kid } => {
                write!(
                    f,
                    "auth_public_key_files: two keys have kid {kid:?}; a kid must name one key"
                )
            }
            Self::TooManyKeys(count) => {
                write!(
                    f,
                    "auth_public_key_files: {count} keys in all; at most {MAX_KEYS} are accepted"
                )
            }
        }
    }
}

impl std::error::Error for AuthConfigError {}

// ---------------------------------------------------------------------------------------
// Errors on the connection path
// ---------------------------------------------------------------------------------------

/// Defines [`AuthError`] from one table, so label, reason and challenge cannot drift.
/// `$reason` is the 401 body and the challenge's `error_description`, so it must be
/// NQSCHAR (printable ASCII without `"` and `\`, RFC 6750 section 3): a test checks.
macro_rules! auth_errors {
    ($($(#[$doc:meta])* $variant:ident => $label:literal, $reason:literal;)*) => {
        /// Why an upgrade was refused with 401. Carries no data, so it can never leak a
        /// token. Each variant is a metric label ([`label`](Self::label)), a response body
        /// ([`reason`](Self::reason)) and a `WWW-Authenticate` challenge
        /// ([`www_authenticate`](Self::www_authenticate)).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum AuthError {
            $($(#[$doc])* $variant,)*
        }

        impl AuthError {
            /// Every variant, so metrics can register each label at start-up.
            pub const ALL: &'static [AuthError] = &[$(AuthError::$variant,)*];

            /// A snake_case metric label, unique per variant.
            pub const fn label(self) -> &'static str {
                match self {
                    $(AuthError::$variant => $label,)*
                }
            }

            /// A short reason for the 401 body. Never contains the token.
            pub const fn reason(self) -> &'static str {
                match self {
                    $(AuthError::$variant => $reason,)*
                }
            }

            /// The `WWW-Authenticate` value (RFC 6750 section 3): `Bearer realm="wsgate"`
            /// alone when no token was sent (section 3.1 asks for no error code then),
            /// else with `error="invalid_token"` and the reason as `error_description`.
            pub const fn www_authenticate(self) -> &'static str {
                if let AuthError::Missing = self {
                    return "Bearer realm=\"wsgate\"";
                }
                match self {
                    $(AuthError::$variant => concat!(
                        "Bearer realm=\"wsgate\", error=\"invalid_token\", error_description=\"",
                        $reason,
                        "\""
                    ),)*
                }
            }
        }
    };
}

auth_errors! {
    /// No carrier holds a token.
    Missing => "missing", "authentication required: send a bearer token";
    /// Not a compact JWS: not three base64url segments, header or claims not JSON, a
    /// known claim of the wrong type, a `crit` header, an empty token, two
    /// `bearer.` subprotocols.
    Malformed => "malformed", "token is not a well-formed JWT";
    /// Longer than [`MAX_TOKEN_BYTES`].
    TokenTooLarge => "token_too_large", "token is too large";
    /// `alg` is not in the allowed set (`none` never is).
    AlgorithmNotAllowed => "algorithm_not_allowed", "token algorithm is not allowed";
    /// No configured key fits the token's `alg` and `kid`.
    UnknownKey => "unknown_key", "token is signed with an unknown key";
    /// No candidate key verifies the signature.
    BadSignature => "bad_signature", "token signature is invalid";
    /// `now >= exp + leeway`.
    Expired => "expired", "token has expired";
    /// `now < nbf - leeway`.
    NotYetValid => "not_yet_valid", "token is not valid yet";
    /// No `exp`: tokens that never expire are refused.
    MissingExpiry => "missing_expiry", "token has no exp claim";
    /// `iss` differs from the configured issuer, or is absent.
    WrongIssuer => "wrong_issuer", "token issuer is not accepted";
    /// `aud` does not contain the configured audience, or is present with none
    /// configured.
    WrongAudience => "wrong_audience", "token audience is not accepted";
    /// No `sub`, or an empty one.
    MissingSubject => "missing_subject", "token has no sub claim";
    /// `sub` longer than [`MAX_USER_ID_BYTES`] or with control characters.
    InvalidSubject => "invalid_subject", "token sub claim is too long or has control characters";
    /// `join` or `publish` with too many entries, an entry too long or empty, or a `*`
    /// that is not last.
    InvalidRights => "invalid_rights", "token join or publish claim is invalid";
}

impl AuthError {
    /// The HTTP status: always 401.
    pub const fn status(self) -> Status {
        Status::Unauthorized
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for AuthError {}

// ---------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------

/// Where the token was found, for metrics (`auth_accepted{carrier=...}`): a rising
/// share of `query` means tokens are reaching URL logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Carrier {
    /// `Authorization: Bearer`.
    Header,
    /// The query parameter.
    Query,
    /// A `bearer.<token>` subprotocol.
    Subprotocol,
    /// No token: [`AuthMode::None`].
    Anonymous,
}

impl Carrier {
    /// A snake_case metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Carrier::Header => "header",
            Carrier::Query => "query",
            Carrier::Subprotocol => "subprotocol",
            Carrier::Anonymous => "anonymous",
        }
    }
}

/// Who the client is, and what the token lets it do. Holds no token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user id: the token's `sub` (non-empty, at most [`MAX_USER_ID_BYTES`], no
    /// control characters), or in [`AuthMode::None`] the `user` query parameter or a
    /// generated `anon-<n>`.
    pub user_id: String,
    /// The token's `join` claim: rooms the user may join (names and `prefix*`
    /// patterns). `None` when the claim is absent: the token does not restrict joining.
    pub can_join: Option<Vec<String>>,
    /// The token's `publish` claim, likewise.
    pub can_publish: Option<Vec<String>>,
    /// When the token expires (`exp`, without the leeway). The server may close the
    /// connection then, or ask for a fresh token; `None` in [`AuthMode::None`].
    pub expires_at: Option<SystemTime>,
    /// Where the token came from.
    pub carrier: Carrier,
    /// The id was made up (`anon-<n>`, [`AuthMode::None`] without a `user` parameter):
    /// nobody can address this user, so the server keeps no per-user state for it.
    pub generated: bool,
}

impl Identity {
    /// Whether the user may join `room`: true if the token has no `join` claim, else if
    /// an entry equals `room` or is a prefix ending in `*` that `room` starts with.
    pub fn may_join(&self, room: &str) -> bool {
        allows(self.can_join.as_deref(), room)
    }

    /// Whether the user may publish to `room`, by the same rule as
    /// [`may_join`](Self::may_join) on the `publish` claim.
    pub fn may_publish(&self, room: &str) -> bool {
        allows(self.can_publish.as_deref(), room)
    }
}

fn allows(patterns: Option<&[String]>, room: &str) -> bool {
    let Some(patterns) = patterns else {
        return true;
    };
    patterns.iter().any(|pattern| match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    })
}

/// Checks a user id (from `sub`, the anonymous `user` parameter, or `wsgate token`).
fn check_user_id(user_id: &str) -> Result<(), AuthError> {
    if user_id.is_empty() {
        Err(AuthError::MissingSubject)
    } else if user_id.len() > MAX_USER_ID_BYTES || user_id.chars().any(char::is_control) {
        Err(AuthError::InvalidSubject)
    } else {
        Ok(())
    }
}

/// Checks a `join` or `publish` claim (see the module docs).
fn check_rights(patterns: &[String]) -> Result<(), AuthError> {
    let valid = |p: &String| {
        !p.is_empty()
            && p.len() <= MAX_ROOM_PATTERN_BYTES
            && !p.chars().any(char::is_control)
            && !p.trim_end_matches('*').contains('*')
            && !p.ends_with("**")
    };
    if patterns.len() <= MAX_RIGHTS_ENTRIES && patterns.iter().all(valid) {
        Ok(())
    } else {
        Err(AuthError::InvalidRights)
    }
}

// ---------------------------------------------------------------------------------------
// The authenticator
// ---------------------------------------------------------------------------------------

/// Verifies tokens. Built once at start-up from an [`AuthConfig`] and shared read-only
/// by every shard.
pub struct Authenticator {
    /// `jwt` or `none`.
    mode: AuthMode,
    /// Every key that can verify something, the HMAC secret first, then the files in
    /// order. Each key's algorithm set is already narrowed to the allowed set.
    keys: Vec<VerifyingKey>,
    /// Algorithms a token may use: the union of the keys' sets.
    allowed: AlgorithmSet,
    /// Required `iss`.
    issuer: Option<String>,
    /// Required member of `aud`.
    audience: Option<String>,
    /// Leeway on `exp` and `nbf`, whole seconds.
    leeway_secs: i64,
    /// The query carrier's parameter name, if enabled.
    query_param: Option<String>,
    /// Whether `bearer.<token>` subprotocols are read.
    subprotocol_carrier: bool,
    /// Next anonymous user number in [`AuthMode::None`], shared by all shards so the
    /// ids are unique in the process.
    next_anonymous: AtomicU64,
}

impl fmt::Debug for Authenticator {
    /// Names the keys by origin, kind and algorithms; never their bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("keys", &self.keys)
            .field("allowed", &self.allowed)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("query_param", &self.query_param)
            .field("subprotocol_carrier", &self.subprotocol_carrier)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Checks `config` and loads its keys. In [`AuthMode::None`] no key is loaded (any
    /// configured is ignored) and only the carrier options are checked.
    ///
    /// Errors name the option or the file and what is wrong with it; see
    /// [`AuthConfigError`].
    pub fn new(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        if !LEEWAY_RANGE.contains(&config.leeway) {
            return Err(AuthConfigError::Invalid {
                key: "auth_leeway",
                problem: format!(
                    "{:?}; at most {:?}, as an expired token stays usable that long",
                    config.leeway,
                    LEEWAY_RANGE.end()
                ),
            });
        }
        if let Some(name) = &config.query_param {
            let valid = (1..=MAX_QUERY_PARAM_NAME_BYTES).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
            if !valid {
                return Err(AuthConfigError::Invalid {
                    key: "auth_query_param",
                    problem: format!(
                        "{name:?}; a name of 1 to {MAX_QUERY_PARAM_NAME_BYTES} characters from A-Z a-z 0-9 - . _ ~ \
                         (empty disables the query carrier)"
                    ),
                });
            }
        }
        for (key, value) in [("auth_issuer", &config.issuer), ("auth_audience", &config.audience)] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(AuthConfigError::Invalid {
                    key,
                    problem: "empty; leave it unset to not check it".to_owned(),
                });
            }
        }
        let mut authenticator = Self {
            mode: config.mode,
            keys: Vec::new(),
            allowed: AlgorithmSet::default(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_secs: i64::try_from(config.leeway.as_secs()).unwrap_or(i64::MAX),
            query_param: config.query_param.clone(),
            subprotocol_carrier: config.subprotocol_carrier,
            next_anonymous: AtomicU64::new(1),
        };
        if config.mode == AuthMode::Jwt {
            authenticator.load_keys(config)?;
        }
        Ok(authenticator)
    }

    fn load_keys(&mut self, config: &AuthConfig) -> Result<(), AuthConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = load_secret(config)? {
            keys.push(secret);
        }
        for path in &config.public_key_files {
            let file_keys = keys::load_public_key_file(path).map_err(|problem| AuthConfigError::File {
                key: "auth_public_key_files",
                path: path.clone(),
                problem,
            })?;
            keys.extend(file_keys);
        }
        if keys.is_empty() {
            return Err(AuthConfigError::NoKeys);
        }
        if keys.len() > MAX_KEYS {
            return Err(AuthConfigError::TooManyKeys(keys.len()));
        }
        for (i, key) in keys.iter().enumerate() {
            if let Some(kid) = &key.kid
                && keys[..i].iter().any(|k| k.kid.as_ref() == Some(kid))
            {
                return Err(AuthConfigError::DuplicateKid { kid: kid.clone() });
            }
        }

        // The allowed set: as configured, or each key's default.
        let allowed = if config.algorithms.is_empty() {
            keys.iter().fold(AlgorithmSet::default(), |set, key| {
                let default = if key.pinned {
                    key.algorithms
                } else {
                    AlgorithmSet::of(&[key.kind.default_algorithm()])
                };
                set.union(default)
            })
        } else {
            let allowed = AlgorithmSet::of(&config.algorithms);
            for alg in allowed.iter() {
                if !keys.iter().any(|key| key.algorithms.contains(alg)) {
                    return Err(AuthConfigError::AlgorithmWithoutKey(alg));
                }
            }
            allowed
        };
        // An HMAC secret long enough for HS256 may be too short for HS384/HS512.
        if let Some(secret) = keys.iter().find(|k| k.kind == KeyKind::Hmac) {
            let needed = allowed
                .intersect(KeyKind::Hmac.algorithms())
                .iter()
                .map(Algorithm::min_secret_bytes)
                .max()
                .unwrap_or(0);
            let have = secret.key.try_get_hmac_secret().map_or(0, <[u8]>::len);
            if have < needed {
                return Err(AuthConfigError::Invalid {
                    key: hmac_secret_key(config),
                    problem: format!("{have} bytes; the allowed HMAC algorithms need at least {needed}"),
                });
            }
        }
        for key in &mut keys {
            key.algorithms = key.algorithms.intersect(allowed);
        }
        // Keys no allowed algorithm can use are dropped: they would never be tried.
        keys.retain(|key| !key.algorithms.is_empty());
        debug_assert!(!keys.is_empty() && !allowed.is_empty());
        self.allowed = keys
            .iter()
            .fold(AlgorithmSet::default(), |set, k| set.union(k.algorithms));
        self.keys = keys;
        Ok(())
    }

    /// The mode this authenticator runs in.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The algorithms a token may use (empty in [`AuthMode::None`]), for the start-up
    /// report.
    pub fn allowed_algorithms(&self) -> Vec<Algorithm> {
        self.allowed.iter().collect()
    }

    /// How many verifying keys are loaded, for the start-up report.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Authenticates an upgrade request: finds the token (header, then query, then
    /// subprotocol, see the module docs) and verifies it at `now`.
    ///
    /// In [`AuthMode::None`] every request is admitted as an anonymous user: the id is
    /// the `user` query parameter if present (checked like a `sub`, so it can fail
    /// with `missing_subject` or `invalid_subject`), else `anon-<n>` with `n` counting
    /// from 1 in this process. Any token sent is ignored.
    pub fn authenticate(&self, request: &Request<'_>, now: SystemTime) -> Result<Identity, AuthError> {
        debug_assert!(
            !request
                .selected_protocol()
                .is_some_and(|p| p.starts_with(SUBPROTOCOL_PREFIX)),
            "a token subprotocol was selected: check_subprotocols was not called on the handshake config"
        );
        if self.mode == AuthMode::None {
            return self.anonymous(request);
        }
        let (token, carrier) = self.find_token(request)?;
        let mut identity = self.verify_token(&token, now)?;
        identity.carrier = carrier;
        Ok(identity)
    }

    /// Verifies a token given directly (not from an upgrade request), for callers such
    /// as a future in-band token refresh. The [`Identity::carrier`] is `Header`. In
    /// [`AuthMode::None`] no algorithm is allowed, so every token fails.
    pub fn verify_token(&self, token: &str, now: SystemTime) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TokenTooLarge);
        }
        let segments = token::split(token)?;
        let header = token::parse_header(&token::decode_segment(segments.header)?)?;
        let alg = Algorithm::from_name(&header.alg)
            .filter(|&alg| self.allowed.contains(alg))
            .ok_or(AuthError::AlgorithmNotAllowed)?;
        if header.crit.is_some() {
            return Err(AuthError::Malformed);
        }
        self.verify_signature(&segments, alg, header.kid.as_deref())?;
        let claims = token::parse_claims(&token::decode_segment(segments.payload)?)?;
        self.check_claims(claims, now)
    }

    /// Tries the candidate keys for `alg` and `kid` (see the module docs).
    fn verify_signature(
        &self,
        segments: &token::Segments<'_>,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<(), AuthError> {
        let fits = |key: &&VerifyingKey| key.algorithms.contains(alg);
        let kid_known = kid.is_some_and(|kid| self.keys.iter().filter(fits).any(|k| k.kid.as_deref() == Some(kid)));
        let mut tried = 0;
        for key in self.keys.iter().filter(fits) {
            let eligible = match kid {
                Some(_) if kid_known => key.kid.as_deref() == kid,
                Some(_) => key.kid.is_none(),
                None => true,
            };
            if !eligible {
                continue;
            }
            tried += 1;
            if segments.signature.is_empty() {
                // An unsigned token with an allowed algorithm: nothing to verify.
                return Err(AuthError::BadSignature);
            }
            // Err means the signature is not even well-formed for the algorithm (bad
            // base64 length, wrong size): as bad as a wrong one.
            let verified = jsonwebtoken::crypto::verify(
                segments.signature,
                segments.signing_input.as_bytes(),
                &key.key,
                alg.to_jwt(),
            )
            .unwrap_or(false);
            if verified {
                return Ok(());
            }
        }
        debug_assert!(tried <= MAX_KEYS);
        if tried == 0 {
            Err(AuthError::UnknownKey)
        } else {
            Err(AuthError::BadSignature)
        }
    }

    /// Checks the claims of a token whose signature is valid.
    fn check_claims(&self, claims: token::Claims, now: SystemTime) -> Result<Identity, AuthError> {
        let now = token::unix_seconds(now);
        let exp = claims.exp.ok_or(AuthError::MissingExpiry)?.0;
        if now >= exp.saturating_add(self.leeway_secs) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.nbf
            && now < nbf.0.saturating_sub(self.leeway_secs)
        {
            return Err(AuthError::NotYetValid);
        }
        if let Some(issuer) = &self.issuer
            && claims.iss.as_deref() != Some(issuer.as_str())
        {
            return Err(AuthError::WrongIssuer);
        }
        match (&self.audience, &claims.aud) {
            (Some(expected), Some(aud)) if aud.contains(expected) => {}
            (None, None) => {}
            _ => return Err(AuthError::WrongAudience),
        }
        let user_id = claims.sub.ok_or(AuthError::MissingSubject)?;
        check_user_id(&user_id)?;
        for rights in [&claims.join, &claims.publish].into_iter().flatten() {
            check_rights(rights)?;
        }
        Ok(Identity {
            user_id,
            can_join: claims.join,
            can_publish: claims.publish,
            expires_at: Some(token::system_time(exp)),
            carrier: Carrier::Header,
            generated: false,
        })
    }

    /// The token and where it was found: the first carrier that has one.
    fn find_token<'r>(&self, request: &Request<'r>) -> Result<(Cow<'r, str>, Carrier), AuthError> {
        if let Some(value) = request.authorization()
            && let Some(token) = bearer_token(value)?
        {
            return Ok((Cow::Borrowed(token), Carrier::Header));
        }
        if let Some(name) = &self.query_param
            && let Some(token) = request.query_param(name)
        {
            if token.is_empty() {
                return Err(AuthError::Malformed);
            }
            return Ok((token, Carrier::Query));
        }
        if self.subprotocol_carrier {
            let mut found = None;
            for token in request
                .offered_protocols()
                .filter_map(|p| p.strip_prefix(SUBPROTOCOL_PREFIX))
            {
                if found.is_some() {
                    // Two tokens: which one is meant is ambiguous, like two
                    // Authorization headers.
                    return Err(AuthError::Malformed);
                }
                found = Some(token);
            }
            if let Some(token) = found {
                if token.is_empty() {
                    return Err(AuthError::Malformed);
                }
                return Ok((Cow::Borrowed(token), Carrier::Subprotocol));
            }
        }
        Err(AuthError::Missing)
    }

    fn anonymous(&self, request: &Request<'_>) -> Result<Identity, AuthError> {
        let (user_id, generated) = match request.query_param(ANONYMOUS_USER_PARAM) {
            Some(user) => {
                check_user_id(&user)?;
                (user.into_owned(), false)
            }
            None => (
                format!("anon-{}", self.next_anonymous.fetch_add(1, Ordering::Relaxed)),
                true,
            ),
        };
        Ok(Identity {
            user_id,
            can_join: None,
            can_publish: None,
            expires_at: None,
            carrier: Carrier::Anonymous,
            generated,
        })
    }
}

/// The token of an `Authorization` value, the crate's one Bearer parser (also the
/// admin API key's, `crate::admin`): `Ok(Some)` for `Bearer` (any case), one or more
/// spaces, then one token68 (RFC 9110 section 11.2, RFC 6750 section 2.1); `Ok(None)`
/// for another scheme (not ours); `Err(Malformed)` for a `Bearer` followed by anything
/// else (nothing, two words, a comma, a quoted string). Whitespace around the whole
/// value is not part of it (RFC 9110 section 5.5) and is ignored.
pub(crate) fn bearer_token(value: &str) -> Result<Option<&str>, AuthError> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_start_matches(' ');
    if !is_token68(token.as_bytes()) {
        return Err(AuthError::Malformed);
    }
    Ok(Some(token))
}

/// Whether `value` is one token68 (RFC 9110 section 11.2), the only shape a Bearer
/// credential can have: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
/// The admin API key is checked with it at start-up, so a key that no request could
/// ever present is refused there rather than answering 401 forever.
pub(crate) fn is_token68(value: &[u8]) -> bool {
    let padding = value.iter().rev().take_while(|&&b| b == b'=').count();
    let body = &value[..value.len() - padding];
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(b);
    !body.is_empty() && body.iter().all(allowed)
}

/// The config key the HMAC secret came from, for messages.
fn hmac_secret_key(config: &AuthConfig) -> &'static str {
    if config.hmac_secret_file.is_some() {
        "auth_hmac_secret_file"
    } else {
        "auth_hmac_secret"
    }
}

/// The HMAC secret as a verifying key, if one is configured.
fn load_secret(config: &AuthConfig) -> Result<Option<VerifyingKey>, AuthConfigError> {
    let (bytes, origin) = match (&config.hmac_secret, &config.hmac_secret_file) {
        (Some(_), Some(_)) => {
            return Err(AuthConfigError::Invalid {
                key: "auth_hmac_secret",
                problem: "set together with auth_hmac_secret_file; give one".to_owned(),
            });
        }
        (Some(secret), None) => (secret.expose().to_vec(), "auth_hmac_secret".to_owned()),
        (None, Some(path)) => {
            let bytes = keys::read_bounded(path, MAX_KEY_FILE_BYTES).map_err(|problem| AuthConfigError::File {
                key: "auth_hmac_secret_file",
                path: path.clone(),
                problem,
            })?;
            (keys::secret_from_file(bytes), path.display().to_string())
        }
        (None, None) => return Ok(None),
    };
    keys::check_hmac_secret(&bytes, MIN_HMAC_SECRET_BYTES).map_err(|problem| match &config.hmac_secret_file {
        Some(path) => AuthConfigError::File {
            key: "auth_hmac_secret_file",
            path: path.clone(),
            problem,
        },
        None => AuthConfigError::Invalid {
            key: "auth_hmac_secret",
            problem,
        },
    })?;
    Ok(Some(VerifyingKey {
        kid: None,
        kind: KeyKind::Hmac,
        algorithms: KeyKind::Hmac.algorithms(),
        pinned: false,
        key: jsonwebtoken::DecodingKey::from_secret(&bytes),
        origin,
    }))
}

/// Runs `verify_token` on arbitrary bytes with an HS256 authenticator and checks that
/// it neither panics nor accepts anything not signed with its secret. For fuzzers and
/// the property tests; not part of the API.
#[doc(hidden)]
pub fn fuzz_verify_token(data: &[u8]) {
    use std::sync::OnceLock;
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    let auth = AUTH.get_or_init(|| {
        Authenticator::new(&AuthConfig {
            hmac_secret: Some(Secret::from("fuzz-secret-fuzz-secret-fuzz-secret!")),
            ..AuthConfig::default()
        })
        .expect("the fuzz config is valid")
    });
    let token = String::from_utf8_lossy(data);
    if let Ok(identity) = auth.verify_token(&token, SystemTime::UNIX_EPOCH) {
        unreachable!("an unsigned input was accepted as {}", identity.user_id);
    }
}

/// Runs the public key file parser on arbitrary bytes: it must not panic. For fuzzers
/// and the property tests; not part of the API.
#[doc(hidden)]
pub fn fuzz_key_file(data: &[u8]) {
    let _ = keys::parse_public_keys(data, "fuzz");
}
