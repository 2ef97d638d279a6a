//! Minting tokens: [`mint`] for tests and tools, and the `wsgate token` subcommand
//! ([`TokenArgs`], [`run_token`]) so an operator can make a token to try a deployment
//! with, signed by the same secret or key pair the gateway verifies with.
//!
//! The tokens carry exactly the claims [`super::Authenticator`] reads: `sub`, `iat`,
//! `exp`, and optionally `nbf`, `iss`, `aud`, `join`, `publish`.

use std::fmt;
use std::io::Write as _;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::keys::{self, KeyKind, SigningKey};
use super::{Algorithm, MAX_KEY_FILE_BYTES, Secret, check_rights, check_user_id, token};

/// Default [`MintOptions::lifetime`]: long enough to try things by hand, short enough
/// that a token pasted into a chat is soon useless.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Accepted [`MintOptions::lifetime`]: from one second to a year. Tokens are bearer
/// credentials that cannot be revoked before they expire, so no longer.
pub const LIFETIME_RANGE: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(366 * 86_400);

/// The key a token is signed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MintKey {
    /// An HMAC secret given directly (HS256 by default).
    HmacSecret(Secret),
    /// A file holding the HMAC secret (one trailing newline dropped, as the gateway
    /// reads it).
    HmacSecretFile(PathBuf),
    /// A PEM private key: PKCS#8 `PRIVATE KEY` (RSA, EC P-256/P-384, Ed25519) or
    /// PKCS#1 `RSA PRIVATE KEY`.
    PrivateKeyFile(PathBuf),
}

/// What to put in a token and how to sign it. `Debug` is derived: the secret is a
/// [`Secret`], which redacts itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MintOptions {
    /// The user id, `sub`. Checked as the gateway checks it (non-empty, at most
    /// [`super::MAX_USER_ID_BYTES`], no control characters).
    pub user_id: String,
    /// `exp - iat`, whole seconds. Default [`DEFAULT_LIFETIME`], range
    /// [`LIFETIME_RANGE`].
    pub lifetime: Duration,
    /// `iat`, and the start of the lifetime: the current time, or another for tests.
    pub issued_at: SystemTime,
    /// `nbf`, if the token must not be used before some time.
    pub not_before: Option<SystemTime>,
    /// `iss`.
    pub issuer: Option<String>,
    /// `aud` (one string).
    pub audience: Option<String>,
    /// `join`: rooms the user may join (names, or prefixes ending in `*`). `None` leaves
    /// the claim out (no restriction); an empty list allows nothing.
    pub join: Option<Vec<String>>,
    /// `publish`, likewise.
    pub publish: Option<Vec<String>>,
    /// The signing key.
    pub key: MintKey,
    /// The algorithm; `None` picks the key's usual one (HS256, RS256, ES256 or ES384
    /// by curve, EdDSA).
    pub algorithm: Option<Algorithm>,
    /// `kid` header, naming the key in the verifier's JWKS.
    pub kid: Option<String>,
}

impl MintOptions {
    /// A token for `user_id`, signed with `key`, issued at `issued_at`, valid for
    /// [`DEFAULT_LIFETIME`], with no optional claim.
    pub fn new(user_id: impl Into<String>, key: MintKey, issued_at: SystemTime) -> Self {
        Self {
            user_id: user_id.into(),
            lifetime: DEFAULT_LIFETIME,
            issued_at,
            not_before: None,
            issuer: None,
            audience: None,
            join: None,
            publish: None,
            key,
            algorithm: None,
            kid: None,
        }
    }
}

/// Why a token could not be minted. Never contains the secret or key bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MintError {
    /// An option is invalid.
    Invalid {
        /// The `wsgate token` flag it corresponds to (`--user`, `--ttl`, ...).
        option: &'static str,
        /// What is wrong and what is accepted.
        problem: String,
    },
    /// The key cannot be read or used.
    Key {
        /// The file, or `--hmac-secret`.
        source: String,
        /// What is wrong.
        problem: String,
    },
    /// The crypto library refused to sign (a key it cannot use).
    Sign(String),
}

impl MintError {
    /// The process exit code for `wsgate token`: 2 for a usage error, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            MintError::Invalid { .. } => 2,
            MintError::Key { .. } | MintError::Sign(_) => 1,
        }
    }
}

impl fmt::Display for MintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MintError::Invalid { option, problem } => write!(f, "{option}: {problem}"),
            MintError::Key { source, problem } => write!(f, "{source}: {problem}"),
            MintError::Sign(problem) => write!(f, "cannot sign: {problem}"),
        }
    }
}

impl std::error::Error for MintError {}

/// The claims of a minted token, in the order a reader expects.
#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    iat: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    join: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish: Option<&'a [String]>,
}

/// Signs a token with `options`. The claims are checked by the rules the gateway
/// applies, so a minted token is one the gateway can accept (given the same key,
/// issuer and audience).
pub fn mint(options: &MintOptions) -> Result<String, MintError> {
    let invalid = |option, problem: &str| MintError::Invalid {
        option,
        problem: problem.to_owned(),
    };
    check_user_id(&options.user_id).map_err(|e| invalid("--user", e.reason()))?;
    if !LIFETIME_RANGE.contains(&options.lifetime) {
        return Err(invalid("--ttl", "from 1s to 366d"));
    }
    for (option, value) in [
        ("--issuer", &options.issuer),
        ("--audience", &options.audience),
        ("--kid", &options.kid),
    ] {
        if value.as_deref().is_some_and(str::is_empty) {
            return Err(invalid(option, "empty; leave it out instead"));
        }
    }
    for (option, rights) in [("--join", &options.join), ("--publish", &options.publish)] {
        if let Some(rights) = rights {
            check_rights(rights).map_err(|_| {
                invalid(
                    option,
                    "room names or prefixes ending in *, non-empty, at most 256 of them, each at most 256 bytes",
                )
            })?;
        }
    }

    let SigningKey { kind, key } = signing_key(&options.key)?;
    let alg = options.algorithm.unwrap_or(kind.default_algorithm());
    if !kind.algorithms().contains(alg) {
        return Err(MintError::Invalid {
            option: "--alg",
            problem: format!("{alg} cannot be used with a {} key", kind.describe()),
        });
    }
    if kind == KeyKind::Hmac {
        let have = key.try_get_hmac_secret().map_or(0, <[u8]>::len);
        if have < alg.min_secret_bytes() {
            return Err(MintError::Invalid {
                option: "--alg",
                problem: format!("{alg} needs a secret of at least {} bytes", alg.min_secret_bytes()),
            });
        }
    }

    let iat = token::unix_seconds(options.issued_at);
    let lifetime = i64::try_from(options.lifetime.as_secs()).unwrap_or(i64::MAX);
    let claims = MintedClaims {
        sub: &options.user_id,
        iat,
        exp: iat.saturating_add(lifetime),
        nbf: options.not_before.map(token::unix_seconds),
        iss: options.issuer.as_deref(),
        aud: options.audience.as_deref(),
        join: options.join.as_deref(),
        publish: options.publish.as_deref(),
    };
    let mut header = jsonwebtoken::Header::new(alg.to_jwt());
    header.kid = options.kid.clone();
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| MintError::Sign(e.to_string()))
}

/// `key` with a secret file read once, for minting many tokens (`bench density` mints
/// one per connection): an HMAC secret file becomes the secret it holds; other keys are
/// returned as they are.
pub fn load_key(key: &MintKey) -> Result<MintKey, MintError> {
    match key {
        MintKey::HmacSecretFile(path) => {
            let bytes = keys::read_bounded(path, MAX_KEY_FILE_BYTES).map_err(|problem| MintError::Key {
                source: path.display().to_string(),
                problem,
            })?;
            let secret = keys::secret_from_file(bytes);
            Ok(MintKey::HmacSecret(Secret::from(
                std::str::from_utf8(&secret).map_err(|_| MintError::Key {
                    source: path.display().to_string(),
                    problem: "not UTF-8 (a text secret is needed to mint many tokens)".to_owned(),
                })?,
            )))
        }
        other => Ok(other.clone()),
    }
}

/// Reads and types the signing key.
fn signing_key(key: &MintKey) -> Result<SigningKey, MintError> {
    let secret_key = |bytes: &[u8], source: String| {
        keys::check_hmac_secret(bytes, super::MIN_HMAC_SECRET_BYTES)
            .map_err(|problem| MintError::Key { source, problem })?;
        Ok(SigningKey {
            kind: KeyKind::Hmac,
            key: jsonwebtoken::EncodingKey::from_secret(bytes),
        })
    };
    match key {
        MintKey::HmacSecret(secret) => secret_key(secret.expose(), "--hmac-secret".to_owned()),
        MintKey::HmacSecretFile(path) => {
            let source = path.display().to_string();
            let bytes = keys::read_bounded(path, MAX_KEY_FILE_BYTES).map_err(|problem| MintError::Key {
                source: source.clone(),
                problem,
            })?;
            secret_key(&keys::secret_from_file(bytes), source)
        }
        MintKey::PrivateKeyFile(path) => keys::load_private_key_file(path).map_err(|problem| MintError::Key {
            source: path.display().to_string(),
            problem,
        }),
    }
}

// ---------------------------------------------------------------------------------------
// `wsgate token`
// ---------------------------------------------------------------------------------------

/// `wsgate token`: prints a signed token for trying a deployment, like Centrifugo's
/// `gentoken`. Mount it with `#[command(flatten)]` in a `Token(TokenArgs)` subcommand
/// and call [`run_token`].
///
/// Give exactly one key: `--hmac-secret-file` (or its variable), `--hmac-secret` (or
/// its variable), or `--private-key-file`. The variables are the ones the gateway reads,
/// so on a gateway host `wsgate token --user alice` signs with the gateway's secret.
///
/// `Debug` is written by hand: it redacts the secret.
#[derive(clap::Args, Clone, PartialEq, Eq)]
pub struct TokenArgs {
    /// User id: the token's sub claim.
    #[arg(long, value_name = "ID")]
    pub user: String,
    /// How long the token is valid: 30s, 15m, 1h, 7d (1s to 366d).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_lifetime)]
    pub ttl: Duration,
    /// iss claim; must match the gateway's --auth-issuer if that is set.
    #[arg(long, value_name = "ISSUER")]
    pub issuer: Option<String>,
    /// aud claim; must match the gateway's --auth-audience (a gateway without one
    /// refuses tokens that have an aud).
    #[arg(long, value_name = "AUDIENCE")]
    pub audience: Option<String>,
    /// Rooms the user may join: names, or prefixes ending in * (join claim). Without it
    /// the token does not restrict joining; --join= allows none.
    #[arg(long, value_name = "ROOM,...", value_delimiter = ',')]
    pub join: Option<Vec<String>>,
    /// Rooms the user may publish to (publish claim), as for --join.
    #[arg(long, value_name = "ROOM,...", value_delimiter = ',')]
    pub publish: Option<Vec<String>>,
    /// HMAC secret to sign with (HS256). Visible in ps: prefer --hmac-secret-file.
    #[arg(long, value_name = "SECRET", env = "WSGATE_AUTH_HMAC_SECRET", hide_env_values = true)]
    pub hmac_secret: Option<String>,
    /// File holding the HMAC secret to sign with.
    #[arg(long, value_name = "FILE", env = "WSGATE_AUTH_HMAC_SECRET_FILE")]
    pub hmac_secret_file: Option<PathBuf>,
    /// PEM private key to sign with: PKCS#8 RSA, EC P-256/P-384 or Ed25519, or PKCS#1
    /// RSA. The gateway needs the matching public key.
    #[arg(long, value_name = "FILE")]
    pub private_key_file: Option<PathBuf>,
    /// Signature algorithm [default: from the key: HS256, RS256, ES256/ES384, EdDSA].
    #[arg(long, value_name = "ALG")]
    pub alg: Option<Algorithm>,
    /// kid header: the key's id in the gateway's JWKS file.
    #[arg(long, value_name = "KID")]
    pub kid: Option<String>,
}

impl fmt::Debug for TokenArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenArgs")
            .field("user", &self.user)
            .field("ttl", &self.ttl)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("join", &self.join)
            .field("publish", &self.publish)
            .field("hmac_secret", &self.hmac_secret.as_ref().map(|_| "<redacted>"))
            .field("hmac_secret_file", &self.hmac_secret_file)
            .field("private_key_file", &self.private_key_file)
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish()
    }
}

impl TokenArgs {
    /// The mint options these arguments ask for, issued at `now`.
    pub fn to_options(&self, now: SystemTime) -> Result<MintOptions, MintError> {
        let key = match (&self.hmac_secret, &self.hmac_secret_file, &self.private_key_file) {
            (Some(secret), None, None) => MintKey::HmacSecret(Secret::from(secret.as_str())),
            (None, Some(path), None) => MintKey::HmacSecretFile(path.clone()),
            (None, None, Some(path)) => MintKey::PrivateKeyFile(path.clone()),
            (None, None, None) => {
                return Err(MintError::Invalid {
                    option: "--hmac-secret-file",
                    problem: "no key: give --hmac-secret-file, --hmac-secret or --private-key-file".to_owned(),
                });
            }
            _ => {
                return Err(MintError::Invalid {
                    option: "--private-key-file",
                    problem: "more than one key: give one of --hmac-secret-file, --hmac-secret, \
                              --private-key-file (WSGATE_AUTH_HMAC_SECRET and WSGATE_AUTH_HMAC_SECRET_FILE \
                              count as the flags)"
                        .to_owned(),
                });
            }
        };
        // `--join=` (an empty value) means the empty list: the user may join nothing.
        let rights = |list: &Option<Vec<String>>| {
            list.as_ref()
                .map(|list| list.iter().filter(|room| !room.is_empty()).cloned().collect())
        };
        Ok(MintOptions {
            user_id: self.user.clone(),
            lifetime: self.ttl,
            issued_at: now,
            not_before: None,
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            join: rights(&self.join),
            publish: rights(&self.publish),
            key,
            algorithm: self.alg,
            kid: self.kid.clone(),
        })
    }
}

/// Parses a token lifetime: a whole number with `s`, `m`, `h` or `d`, within
/// [`LIFETIME_RANGE`]. A bare number is refused, as in the gateway's config.
fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let expected = || "a duration from 1s to 366d, written like 30s, 15m, 1h or 7d".to_owned();
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(expected)?;
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| expected())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(expected()),
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .filter(|d| LIFETIME_RANGE.contains(d))
        .ok_or_else(expected)
}

/// Runs `wsgate token`: prints the token and a newline to stdout (the output, never a
/// log event) and returns success, or logs the error (never the key) and returns 2 (bad
/// options) or 1 (key unreadable or unusable).
pub fn run_token(args: &TokenArgs) -> ExitCode {
    match args.to_options(SystemTime::now()).and_then(|options| mint(&options)) {
        Ok(token) => {
            let mut stdout = std::io::stdout().lock();
            match writeln!(stdout, "{token}").and_then(|()| stdout.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "cannot write the token");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot mint a token");
            ExitCode::from(e.exit_code())
        }
    }
}
