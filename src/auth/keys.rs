//! Key material, read once at start-up: the HMAC secret, public keys from PEM or JWKS
//! files (for verifying), and a private key from a PEM file (for minting).
//!
//! PEM blocks are read with rustls-pki-types (as the TLS certificate and key are), and the
//! little DER needed (SubjectPublicKeyInfo, PKCS#8, PKCS#1) here, rather than by
//! jsonwebtoken's `use_pem`, so that every key is typed before it is used
//! (RSA with its size, EC with its curve, Ed25519), a private key or a certificate given
//! where a public key belongs is refused with a message that says how to fix it, and an
//! unsupported curve is a start-up error rather than every token failing later with a bad
//! signature. Nothing here runs per connection.
//!
//! Every error message names the file and, for a file with several keys, which key; none
//! includes key or secret bytes.

use std::fs::File;
use std::io::Read as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::{DecodingKey, EncodingKey};
use rustls_pki_types::pem::{self, PemObject as _, SectionKind};
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{Algorithm, AlgorithmSet, MAX_KEY_FILE_BYTES, MAX_KEYS};

/// Accepted RSA modulus sizes. aws-lc verifies PKCS#1 and PSS signatures for 2048- to
/// 8192-bit keys only, so a smaller or larger key would make every token fail with
/// `bad_signature`; refusing it at start-up says why. Below 2048 bits is also unsafe.
pub(super) const RSA_BITS_MIN: usize = 2048;
/// See [`RSA_BITS_MIN`].
pub(super) const RSA_BITS_MAX: usize = 8192;

/// Base64url as JWK members use it (RFC 7518 section 6), tolerating the padding some
/// producers add anyway.
const BASE64URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// Object identifiers, as the content bytes of their DER encoding.
/// rsaEncryption, 1.2.840.113549.1.1.1 (RFC 8017).
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1 (RFC 5480).
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1 / P-256, 1.2.840.10045.3.1.7.
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp384r1 / P-384, 1.3.132.0.34.
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// id-Ed25519, 1.3.101.112 (RFC 8410).
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

// DER tags.
const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

/// What a key is, which decides the algorithms it can verify or sign with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyKind {
    /// A shared secret: HS256, HS384, HS512.
    Hmac,
    /// An RSA key of this many bits: RS* and PS*.
    Rsa(usize),
    /// An EC key on P-256: ES256 only.
    EcP256,
    /// An EC key on P-384: ES384 only.
    EcP384,
    /// An Ed25519 key: EdDSA.
    Ed25519,
}

impl KeyKind {
    /// Every algorithm this kind of key can be used with. An HMAC secret never verifies
    /// an RSA or EC token and the other way round: this is what stops algorithm
    /// confusion, together with the allowed set.
    pub(super) fn algorithms(self) -> AlgorithmSet {
        use Algorithm::*;
        match self {
            KeyKind::Hmac => AlgorithmSet::of(&[Hs256, Hs384, Hs512]),
            KeyKind::Rsa(_) => AlgorithmSet::of(&[Rs256, Rs384, Rs512, Ps256, Ps384, Ps512]),
            KeyKind::EcP256 => AlgorithmSet::of(&[Es256]),
            KeyKind::EcP384 => AlgorithmSet::of(&[Es384]),
            KeyKind::Ed25519 => AlgorithmSet::of(&[EdDsa]),
        }
    }

    /// The algorithm allowed for this key when the configuration lists none: the one
    /// everybody means (RS256 for RSA, not PSS; HS256 for a secret).
    pub(super) fn default_algorithm(self) -> Algorithm {
        match self {
            KeyKind::Hmac => Algorithm::Hs256,
            KeyKind::Rsa(_) => Algorithm::Rs256,
            KeyKind::EcP256 => Algorithm::Es256,
            KeyKind::EcP384 => Algorithm::Es384,
            KeyKind::Ed25519 => Algorithm::EdDsa,
        }
    }

    /// For messages: `RSA (2048 bits)`, `EC P-256`, ...
    pub(super) fn describe(self) -> String {
        match self {
            KeyKind::Hmac => "HMAC secret".to_owned(),
            KeyKind::Rsa(bits) => format!("RSA ({bits} bits)"),
            KeyKind::EcP256 => "EC P-256".to_owned(),
            KeyKind::EcP384 => "EC P-384".to_owned(),
            KeyKind::Ed25519 => "Ed25519".to_owned(),
        }
    }
}

/// One key that can verify tokens.
pub(super) struct VerifyingKey {
    /// The JWK `kid`, if the key came from a JWKS that gave one. PEM keys have none.
    pub(super) kid: Option<String>,
    /// What the key is.
    pub(super) kind: KeyKind,
    /// Algorithms this key may be used with: its kind's, narrowed to the JWK `alg` if
    /// the JWK named one. [`super::Authenticator::new`] narrows it further to the
    /// allowed set.
    pub(super) algorithms: AlgorithmSet,
    /// Whether a JWK `alg` pinned the key (then its one algorithm is also a default).
    pub(super) pinned: bool,
    /// The key in jsonwebtoken's form.
    pub(super) key: DecodingKey,
    /// Where it came from, for messages and Debug: `path` or `path, key 2`.
    pub(super) origin: String,
}

impl std::fmt::Debug for VerifyingKey {
    /// `path, kid "k1": RSA (2048 bits) {RS256}`: where the key came from and what it
    /// may verify, never its bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {:?}", self.origin, self.kind.describe(), self.algorithms)
    }
}

/// One key that can sign tokens (`wsgate token`).
pub(super) struct SigningKey {
    /// What the key is.
    pub(super) kind: KeyKind,
    /// The key in jsonwebtoken's form.
    pub(super) key: EncodingKey,
}

// ---------------------------------------------------------------------------------------
// Files and secrets
// ---------------------------------------------------------------------------------------

/// Reads a file of at most `max` bytes. Bounded so that pointing a key option at
/// `/dev/zero` or a log file fails at once instead of filling memory.
pub(super) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than {max} bytes; this is not a key file"));
    }
    Ok(bytes)
}

/// The secret in a secret file: the whole file, less one trailing line ending (`echo
/// secret > file` adds one, and nobody means it as part of the secret).
pub(super) fn secret_from_file(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    bytes
}

/// Checks an HMAC secret: long enough for the algorithms it will be used with (RFC 7518
/// section 3.2: at least the hash size) and not a PEM or JWKS file, which would mean
/// the operator meant a public key. A public key used as an HMAC secret is the classic
/// algorithm-confusion hole: anybody holding the public key could sign tokens.
pub(super) fn check_hmac_secret(secret: &[u8], min_bytes: usize) -> Result<(), String> {
    let text = String::from_utf8_lossy(&secret[..secret.len().min(64)]);
    let head = text.trim_start();
    if head.starts_with("-----BEGIN") || head.starts_with('{') {
        return Err("looks like a PEM or JWKS key file, not a shared secret; \
             public keys belong in auth_public_key_files"
            .to_owned());
    }
    if secret.len() < min_bytes {
        return Err(format!(
            "{} bytes; at least {min_bytes} are needed (RFC 7518 section 3.2), \
             e.g. `openssl rand -base64 48`",
            secret.len()
        ));
    }
    Ok(())
}

/// Reads the public keys in a PEM file or a JWKS (or single JWK) JSON file.
pub(super) fn load_public_key_file(path: &Path) -> Result<Vec<VerifyingKey>, String> {
    let bytes = read_bounded(path, MAX_KEY_FILE_BYTES)?;
    parse_public_keys(&bytes, &path.display().to_string())
}

/// [`load_public_key_file`] on bytes already read; `name` is used in messages.
pub(super) fn parse_public_keys(bytes: &[u8], name: &str) -> Result<Vec<VerifyingKey>, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "not UTF-8 text (a DER file? convert it to PEM with `openssl pkey -pubin -inform DER`)")?;
    let keys = if text.trim_start().starts_with('{') {
        parse_jwks(text, name)?
    } else if text.contains("-----BEGIN") {
        parse_public_pem(text, name)?
    } else {
        return Err("neither a PEM file (-----BEGIN PUBLIC KEY-----) nor a JWKS JSON file".to_owned());
    };
    if keys.is_empty() {
        return Err("holds no signing key".to_owned());
    }
    if keys.len() > MAX_KEYS {
        return Err(format!("holds {} keys; at most {MAX_KEYS} are accepted", keys.len()));
    }
    Ok(keys)
}

/// Reads the private key in a PEM file, for minting.
pub(super) fn load_private_key_file(path: &Path) -> Result<SigningKey, String> {
    let bytes = read_bounded(path, MAX_KEY_FILE_BYTES)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| "not UTF-8 text; give a PEM file")?;
    parse_private_pem(text)
}

// ---------------------------------------------------------------------------------------
// PEM
// ---------------------------------------------------------------------------------------

/// One `-----BEGIN <label>----- ... -----END <label>-----` block, decoded.
pub(super) struct PemBlock {
    pub(super) label: String,
    pub(super) der: Vec<u8>,
}

/// Every PEM block in `text`, in order (RFC 7468). Text between blocks is ignored, as
/// openssl writes comments and "Bag Attributes" there. Legacy encrypted PEM (with
/// `Proc-Type` headers) is refused.
///
/// rustls-pki-types reads each block (framing and base64: the same reader rustls uses
/// for the TLS certificate and key, so one PEM file works for both). What stays here is
/// what it does not give us: the label of every block. pki-types maps a label onto its
/// closed [`SectionKind`] list and skips any other block without a word, but our
/// messages and choices need every label: `RSA PUBLIC KEY` (PKCS#1, accepted),
/// `ENCRYPTED PRIVATE KEY` and `OPENSSH PRIVATE KEY` (refused with a fix), `EC
/// PARAMETERS` (skipped). So the text is cut at each BEGIN line, each block goes to
/// pki-types on its own (under a stand-in label when pki-types does not know its own,
/// see [`decode_pem_block`]), and the label is taken from the BEGIN line. Lines are
/// trimmed first, so an indented key (pasted into a config template) still reads.
pub(super) fn parse_pem(text: &str) -> Result<Vec<PemBlock>, String> {
    let text: String = text.lines().map(|line| format!("{}\n", line.trim())).collect();
    let mut begins: Vec<(usize, &str)> = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if let Some(label) = pem_begin_label(line.trim_end()) {
            begins.push((offset, label));
        }
        offset += line.len();
    }
    let mut blocks = Vec::with_capacity(begins.len());
    for (index, &(start, label)) in begins.iter().enumerate() {
        let end = begins.get(index + 1).map_or(text.len(), |&(next, _)| next);
        blocks.push(PemBlock {
            label: label.to_owned(),
            der: decode_pem_block(label, &text[start..end])?,
        });
    }
    Ok(blocks)
}

/// `<label>` of a `-----BEGIN <label>-----` line.
fn pem_begin_label(line: &str) -> Option<&str> {
    line.strip_prefix("-----BEGIN ")?.strip_suffix("-----")
}

/// `<label>` of a `-----END <label>-----` line.
fn pem_end_label(line: &str) -> Option<&str> {
    line.strip_prefix("-----END ")?.strip_suffix("-----")
}

/// Decodes one block (its BEGIN line, up to the next BEGIN line or the end) with
/// pki-types. A label pki-types does not know is swapped, on the BEGIN and END lines
/// only, for one it does: `PRIVATE KEY` for a label that names a private key (so the
/// body goes through its constant-time decoder for secrets), `PUBLIC KEY` otherwise.
/// Framing and base64 are the same whatever the label, so the bytes come out as they
/// would under the real one.
fn decode_pem_block(label: &str, block: &str) -> Result<Vec<u8>, String> {
    let relabelled;
    let input = if SectionKind::try_from(label.as_bytes()).is_ok() {
        block
    } else {
        let stand_in = if label.contains("PRIVATE") {
            "PRIVATE KEY"
        } else {
            "PUBLIC KEY"
        };
        let (begin, end) = (format!("-----BEGIN {label}-----"), format!("-----END {label}-----"));
        relabelled = block
            .lines()
            .map(|line| match line {
                _ if line == begin => format!("-----BEGIN {stand_in}-----\n"),
                _ if line == end => format!("-----END {stand_in}-----\n"),
                _ => format!("{line}\n"),
            })
            .collect::<String>();
        &relabelled
    };
    let decoded = <(SectionKind, Vec<u8>)>::from_pem_slice(input.as_bytes());
    // Under a stand-in label, an END line naming the stand-in (`BEGIN RSA PUBLIC KEY`
    // closed by `END PUBLIC KEY`) would close the block; only the block's own END may.
    let closed_by_own_end = block.lines().skip(1).find_map(pem_end_label) == Some(label);
    match decoded {
        Ok((_, der)) if closed_by_own_end => Ok(der),
        Ok(_) => Err(explain_pem_error(label, block, None)),
        Err(error) => Err(explain_pem_error(label, block, Some(&error))),
    }
}

/// Why a block was refused (`error` is pki-types' reason, `None` when the block was
/// closed by an END line not its own), said so that the operator knows what to fix.
/// pki-types reports a mismatched END line as a missing END and a `Proc-Type:` header as
/// bad base64, so the block's lines are read again in order and the first of these
/// problems is the one named.
fn explain_pem_error(label: &str, block: &str, error: Option<&pem::Error>) -> String {
    for line in block.lines().skip(1) {
        if let Some(end) = pem_end_label(line) {
            if end != label {
                return format!("PEM block BEGIN {label} ends with END {end}");
            }
            break;
        }
        if line.contains(':') {
            return format!("PEM block {label} is encrypted or has headers; decrypt it first (`openssl pkey`)");
        }
    }
    match error {
        None | Some(pem::Error::MissingSectionEnd { .. }) => format!("PEM block {label} has no END line"),
        Some(pem::Error::Base64Decode(_)) => format!("PEM block {label} is not valid base64"),
        Some(other) => format!("PEM block {label}: {other}"),
    }
}

fn parse_public_pem(text: &str, name: &str) -> Result<Vec<VerifyingKey>, String> {
    let blocks = parse_pem(text)?;
    let many = blocks.len() > 1;
    let mut keys = Vec::new();
    for (index, block) in blocks.iter().enumerate() {
        let origin = if many {
            format!("{name}, PEM block {}", index + 1)
        } else {
            name.to_owned()
        };
        let at = |problem: String| {
            if many {
                format!("PEM block {} ({}): {problem}", index + 1, block.label)
            } else {
                problem
            }
        };
        let (kind, key) = match block.label.as_str() {
            "PUBLIC KEY" => public_key_from_spki(&block.der).map_err(at)?,
            "RSA PUBLIC KEY" => {
                let bits = rsa_public_key_bits(&block.der).map_err(at)?;
                (KeyKind::Rsa(bits), DecodingKey::from_rsa_der(&block.der))
            }
            // `openssl ecparam -genkey` writes the curve before the key.
            "EC PARAMETERS" => continue,
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" | "OPENSSH PRIVATE KEY" => {
                return Err(at(format!(
                    "is a private key ({}); the gateway needs only the public key: \
                     `openssl pkey -in private.pem -pubout -out public.pem`",
                    block.label
                )));
            }
            "CERTIFICATE" => {
                return Err(at("is a certificate; give its public key: \
                     `openssl x509 -in cert.pem -pubkey -noout > public.pem`"
                    .to_owned()));
            }
            other => return Err(at(format!("unsupported PEM block {other:?}; expected PUBLIC KEY"))),
        };
        keys.push(VerifyingKey {
            kid: None,
            kind,
            algorithms: kind.algorithms(),
            pinned: false,
            key,
            origin,
        });
    }
    Ok(keys)
}

fn parse_private_pem(text: &str) -> Result<SigningKey, String> {
    let mut found = None;
    for block in parse_pem(text)? {
        let key = match block.label.as_str() {
            "PRIVATE KEY" => signing_key_from_pkcs8(&block.der)?,
            "RSA PRIVATE KEY" => {
                let bits = rsa_private_key_bits(&block.der)?;
                SigningKey {
                    kind: KeyKind::Rsa(bits),
                    key: EncodingKey::from_rsa_der(&block.der),
                }
            }
            "EC PRIVATE KEY" => {
                return Err("is a SEC1 EC key; convert it to PKCS#8: \
                     `openssl pkcs8 -topk8 -nocrypt -in ec.pem -out ec-pkcs8.pem`"
                    .to_owned());
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err("is encrypted; decrypt it first: `openssl pkey -in key.pem -out plain.pem`".to_owned());
            }
            "EC PARAMETERS" => continue,
            "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE" => {
                return Err(format!("holds a {}; signing needs the private key", block.label));
            }
            other => return Err(format!("unsupported PEM block {other:?}; expected PRIVATE KEY")),
        };
        if found.is_some() {
            return Err("holds more than one private key; give a file with one".to_owned());
        }
        found = Some(key);
    }
    found.ok_or_else(|| "holds no private key".to_owned())
}

// ---------------------------------------------------------------------------------------
// DER: just enough to read SubjectPublicKeyInfo, PKCS#8 and PKCS#1 headers
// ---------------------------------------------------------------------------------------

/// Splits one DER element off `input`: (tag, contents, rest). Definite lengths of up to
/// four bytes only, which covers every key there is; `None` on anything else.
pub(super) fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count].iter().fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// One element with an expected tag.
pub(super) fn der_expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match der_element(input)? {
        (t, contents, rest) if t == tag => Some((contents, rest)),
        _ => None,
    }
}

/// An AlgorithmIdentifier's contents: the OID, and the parameters if they are an OID
/// (the curve of an EC key); other parameters (RSA's NULL) are not needed.
fn algorithm_identifier(contents: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (oid, rest) = der_expect(contents, TAG_OID)?;
    let curve = der_expect(rest, TAG_OID).map(|(curve, _)| curve);
    Some((oid, curve))
}

/// Bits of a big-endian unsigned integer (leading zero bytes and bits not counted).
fn integer_bits(bytes: &[u8]) -> usize {
    let bytes = match bytes.iter().position(|&b| b != 0) {
        Some(first) => &bytes[first..],
        None => return 0,
    };
    bytes.len() * 8 - bytes[0].leading_zeros() as usize
}

fn check_rsa_bits(bits: usize) -> Result<usize, String> {
    if (RSA_BITS_MIN..=RSA_BITS_MAX).contains(&bits) {
        Ok(bits)
    } else {
        Err(format!(
            "RSA key of {bits} bits; {RSA_BITS_MIN} to {RSA_BITS_MAX} bits are supported"
        ))
    }
}

/// The modulus size of a PKCS#1 RSAPublicKey (`SEQUENCE { n INTEGER, e INTEGER }`).
fn rsa_public_key_bits(der: &[u8]) -> Result<usize, String> {
    let malformed = || "malformed RSA public key".to_owned();
    let (seq, _) = der_expect(der, TAG_SEQUENCE).ok_or_else(malformed)?;
    let (n, rest) = der_expect(seq, TAG_INTEGER).ok_or_else(malformed)?;
    der_expect(rest, TAG_INTEGER).ok_or_else(malformed)?;
    check_rsa_bits(integer_bits(n))
}

/// The modulus size of a PKCS#1 RSAPrivateKey (`SEQUENCE { version, n, e, d, ... }`).
fn rsa_private_key_bits(der: &[u8]) -> Result<usize, String> {
    let malformed = || "malformed RSA private key".to_owned();
    let (seq, _) = der_expect(der, TAG_SEQUENCE).ok_or_else(malformed)?;
    let (_version, rest) = der_expect(seq, TAG_INTEGER).ok_or_else(malformed)?;
    let (n, _) = der_expect(rest, TAG_INTEGER).ok_or_else(malformed)?;
    check_rsa_bits(integer_bits(n))
}

/// A SubjectPublicKeyInfo (RFC 5280 section 4.1.2.7), the `PUBLIC KEY` PEM block.
pub(super) fn public_key_from_spki(der: &[u8]) -> Result<(KeyKind, DecodingKey), String> {
    let malformed = || "malformed public key (not a SubjectPublicKeyInfo)".to_owned();
    let (spki, _) = der_expect(der, TAG_SEQUENCE).ok_or_else(malformed)?;
    let (alg, rest) = der_expect(spki, TAG_SEQUENCE).ok_or_else(malformed)?;
    let (bits, _) = der_expect(rest, TAG_BIT_STRING).ok_or_else(malformed)?;
    let (oid, curve) = algorithm_identifier(alg).ok_or_else(malformed)?;
    // A key is a whole number of bytes: the "unused bits" byte must be 0.
    let key = match bits.split_first() {
        Some((0, key)) => key,
        _ => return Err(malformed()),
    };
    match (oid, curve) {
        (OID_RSA, _) => {
            let bits = rsa_public_key_bits(key)?;
            Ok((KeyKind::Rsa(bits), DecodingKey::from_rsa_der(key)))
        }
        (OID_EC, Some(OID_P256)) => Ok((KeyKind::EcP256, DecodingKey::from_ec_der(ec_point(key, 32)?))),
        (OID_EC, Some(OID_P384)) => Ok((KeyKind::EcP384, DecodingKey::from_ec_der(ec_point(key, 48)?))),
        (OID_EC, _) => Err("EC key on an unsupported curve; P-256 (ES256) and P-384 (ES384) are supported".to_owned()),
        (OID_ED25519, _) if key.len() == 32 => Ok((KeyKind::Ed25519, DecodingKey::from_ed_der(key))),
        (OID_ED25519, _) => Err("malformed Ed25519 public key (not 32 bytes)".to_owned()),
        _ => Err("public key of an unsupported type; RSA, EC P-256/P-384 and Ed25519 are supported".to_owned()),
    }
}

/// Checks an uncompressed EC point (`04 || x || y`) for a curve of `coordinate` bytes.
fn ec_point(point: &[u8], coordinate: usize) -> Result<&[u8], String> {
    if point.len() == 1 + 2 * coordinate && point[0] == 0x04 {
        Ok(point)
    } else {
        Err("EC public key is not an uncompressed point; export it with `openssl pkey -pubout`".to_owned())
    }
}

/// A PKCS#8 PrivateKeyInfo (RFC 5208), the `PRIVATE KEY` PEM block.
fn signing_key_from_pkcs8(der: &[u8]) -> Result<SigningKey, String> {
    let malformed = || "malformed private key (not PKCS#8)".to_owned();
    let (info, _) = der_expect(der, TAG_SEQUENCE).ok_or_else(malformed)?;
    let (_version, rest) = der_expect(info, TAG_INTEGER).ok_or_else(malformed)?;
    let (alg, rest) = der_expect(rest, TAG_SEQUENCE).ok_or_else(malformed)?;
    let (private, _) = der_expect(rest, TAG_OCTET_STRING).ok_or_else(malformed)?;
    let (oid, curve) = algorithm_identifier(alg).ok_or_else(malformed)?;
    // jsonwebtoken's aws-lc signers take PKCS#1 for RSA (the octet string's contents)
    // and the whole PKCS#8 document for EC and Ed25519.
    match (oid, curve) {
        (OID_RSA, _) => Ok(SigningKey {
            kind: KeyKind::Rsa(rsa_private_key_bits(private)?),
            key: EncodingKey::from_rsa_der(private),
        }),
        (OID_EC, Some(OID_P256)) => Ok(SigningKey {
            kind: KeyKind::EcP256,
            key: EncodingKey::from_ec_der(der),
        }),
        (OID_EC, Some(OID_P384)) => Ok(SigningKey {
            kind: KeyKind::EcP384,
            key: EncodingKey::from_ec_der(der),
        }),
        (OID_EC, _) => Err("EC key on an unsupported curve; P-256 and P-384 are supported".to_owned()),
        (OID_ED25519, _) => Ok(SigningKey {
            kind: KeyKind::Ed25519,
            key: EncodingKey::from_ed_der(der),
        }),
        _ => Err("private key of an unsupported type; RSA, EC P-256/P-384 and Ed25519 are supported".to_owned()),
    }
}

// ---------------------------------------------------------------------------------------
// JWKS
// ---------------------------------------------------------------------------------------

/// The members of a JWK we read (RFC 7517 section 4, RFC 7518 section 6). Unknown
/// members (`x5c`, `key_ops`, ...) are ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    /// Private key material: its presence is an error (a JWKS is published).
    d: Option<IgnoredAny>,
}

/// A JWKS (`{"keys": [...]}`) or a single JWK. Keys marked `"use": "enc"` are skipped:
/// identity providers publish encryption keys next to signing keys.
fn parse_jwks(text: &str, name: &str) -> Result<Vec<VerifyingKey>, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let (entries, single) = match value.get("keys") {
        Some(serde_json::Value::Array(keys)) => (keys.clone(), false),
        Some(_) => return Err("\"keys\" is not an array".to_owned()),
        None if value.get("kty").is_some() => (vec![value], true),
        None => return Err("JSON without \"keys\" (a JWKS) or \"kty\" (a JWK)".to_owned()),
    };
    if entries.len() > MAX_KEYS {
        return Err(format!("holds {} keys; at most {MAX_KEYS} are accepted", entries.len()));
    }
    let mut keys = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let label = |kid: Option<&str>| match (single, kid) {
            (true, _) => String::new(),
            (false, Some(kid)) => format!("key {} (kid {kid:?}): ", index + 1),
            (false, None) => format!("key {}: ", index + 1),
        };
        let jwk: Jwk = serde_json::from_value(entry).map_err(|e| format!("{}{e}", label(None)))?;
        let at = |problem: String| format!("{}{problem}", label(jwk.kid.as_deref()));
        if jwk.usage.as_deref() == Some("enc") {
            continue;
        }
        let (kind, key) = jwk_key(&jwk).map_err(at)?;
        let (algorithms, pinned) = match jwk.alg.as_deref() {
            None => (kind.algorithms(), false),
            Some(alg) => match Algorithm::from_name(alg) {
                Some(alg) if kind.algorithms().contains(alg) => (AlgorithmSet::of(&[alg]), true),
                Some(alg) => {
                    return Err(at(format!("alg {} does not fit a {} key", alg.name(), kind.describe())));
                }
                None => return Err(at(format!("alg {alg:?} is not a supported signature algorithm"))),
            },
        };
        let origin = match &jwk.kid {
            Some(kid) => format!("{name}, kid {kid:?}"),
            None if single => name.to_owned(),
            None => format!("{name}, key {}", index + 1),
        };
        keys.push(VerifyingKey {
            kid: jwk.kid,
            kind,
            algorithms,
            pinned,
            key,
            origin,
        });
    }
    Ok(keys)
}

fn jwk_member(value: &Option<String>, member: &str, kty: &str) -> Result<Vec<u8>, String> {
    let text = value
        .as_deref()
        .ok_or_else(|| format!("{kty} key without \"{member}\""))?;
    BASE64URL_LENIENT
        .decode(text)
        .map_err(|_| format!("\"{member}\" is not base64url"))
}

fn jwk_key(jwk: &Jwk) -> Result<(KeyKind, DecodingKey), String> {
    if jwk.d.is_some() {
        return Err("holds private key material (\"d\"); publish only the public part".to_owned());
    }
    match (jwk.kty.as_deref(), jwk.crv.as_deref()) {
        (Some("RSA"), _) => {
            let n = jwk_member(&jwk.n, "n", "RSA")?;
            let e = jwk_member(&jwk.e, "e", "RSA")?;
            let bits = check_rsa_bits(integer_bits(&n))?;
            let n = &n[n.iter().position(|&b| b != 0).unwrap_or(0)..];
            if integer_bits(&e) < 2 {
                return Err("RSA exponent \"e\" is not valid".to_owned());
            }
            Ok((KeyKind::Rsa(bits), DecodingKey::from_rsa_raw_components(n, &e)))
        }
        (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
            let (kind, coordinate) = if crv == "P-256" {
                (KeyKind::EcP256, 32)
            } else {
                (KeyKind::EcP384, 48)
            };
            let x = jwk_member(&jwk.x, "x", "EC")?;
            let y = jwk_member(&jwk.y, "y", "EC")?;
            if x.len() != coordinate || y.len() != coordinate {
                return Err(format!("{crv} coordinates must be {coordinate} bytes each"));
            }
            let point = [&[0x04][..], &x, &y].concat();
            Ok((kind, DecodingKey::from_ec_der(&point)))
        }
        (Some("EC"), crv) => Err(format!(
            "EC curve {} is not supported; P-256 and P-384 are",
            quoted(crv)
        )),
        (Some("OKP"), Some("Ed25519")) => {
            let x = jwk_member(&jwk.x, "x", "OKP")?;
            if x.len() != 32 {
                return Err("Ed25519 \"x\" must be 32 bytes".to_owned());
            }
            Ok((KeyKind::Ed25519, DecodingKey::from_ed_der(&x)))
        }
        (Some("OKP"), crv) => Err(format!("OKP curve {} is not supported; Ed25519 is", quoted(crv))),
        (Some("oct"), _) => Err("is a shared secret (kty \"oct\"); give it as auth_hmac_secret_file, \
             not in a public key file"
            .to_owned()),
        (Some(kty), _) => Err(format!("kty {kty:?} is not supported; RSA, EC and OKP are")),
        (None, _) => Err("no \"kty\"".to_owned()),
    }
}

/// `"P-521"`, or `(none)` for a missing member.
fn quoted(value: Option<&str>) -> String {
    value.map_or_else(|| "(none)".to_owned(), |v| format!("{v:?}"))
}
