//! Tests for token authentication. Keys are generated here with aws-lc-rs (RSA 2048,
//! P-256, P-384, Ed25519), written as PEM and JWKS files into a temporary directory,
//! and read back through the same paths the gateway uses.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use aws_lc_rs::encoding::{AsDer, EcPrivateKeyRfc5915Der, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use proptest::prelude::*;
use serde_json::json;

use super::keys::der_expect;
use super::*;
use crate::limits::Limits;
use crate::proto::handshake::{HandshakeConfig, parse_request};
use crate::server::admission::Refused;

// ---- Fixtures ----

/// The tests' "now": 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600;
/// An HMAC secret of 40 bytes.
const SECRET: &str = "test-secret-0123456789-abcdefghijklmnopq";

fn now() -> SystemTime {
    token::system_time(NOW)
}

fn at(secs: i64) -> SystemTime {
    token::system_time(secs)
}

/// One generated key pair, in the forms the tests need.
struct TestKey {
    /// PKCS#8 `PRIVATE KEY` PEM.
    private_pem: String,
    /// SubjectPublicKeyInfo `PUBLIC KEY` PEM.
    public_pem: String,
    /// The public JWK members (without `kid` and `alg`).
    jwk: serde_json::Value,
    /// For RSA: the PKCS#1 forms, `RSA PRIVATE KEY` and `RSA PUBLIC KEY`.
    pkcs1: Option<(String, String)>,
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

fn b64u(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `SEQUENCE { INTEGER n, INTEGER e }` → (n, e), for RSA JWKs.
fn rsa_components(pkcs1: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (seq, _) = der_expect(pkcs1, 0x30).unwrap();
    let (n, rest) = der_expect(seq, 0x02).unwrap();
    let (e, _) = der_expect(rest, 0x02).unwrap();
    let strip = |x: &[u8]| x[x.iter().position(|&b| b != 0).unwrap()..].to_vec();
    (strip(n), strip(e))
}

fn rsa_key() -> TestKey {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let pkcs8 = AsDer::<Pkcs8V1Der>::as_der(&pair).unwrap();
    let public = pair.public_key();
    let spki = AsDer::<PublicKeyX509Der>::as_der(public).unwrap();
    let pkcs1_public = public.as_ref().to_vec();
    // PrivateKeyInfo's OCTET STRING holds the PKCS#1 RSAPrivateKey.
    let (info, _) = der_expect(pkcs8.as_ref(), 0x30).unwrap();
    let (_, rest) = der_expect(info, 0x02).unwrap();
    let (_, rest) = der_expect(rest, 0x30).unwrap();
    let (pkcs1_private, _) = der_expect(rest, 0x04).unwrap();
    let (n, e) = rsa_components(&pkcs1_public);
    TestKey {
        private_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
        public_pem: pem("PUBLIC KEY", spki.as_ref()),
        jwk: json!({"kty": "RSA", "n": b64u(&n), "e": b64u(&e)}),
        pkcs1: Some((
            pem("RSA PRIVATE KEY", pkcs1_private),
            pem("RSA PUBLIC KEY", &pkcs1_public),
        )),
    }
}

fn ec_key(p384: bool) -> TestKey {
    let alg = if p384 {
        &ECDSA_P384_SHA384_FIXED_SIGNING
    } else {
        &ECDSA_P256_SHA256_FIXED_SIGNING
    };
    let pair = EcdsaKeyPair::generate(alg).unwrap();
    let pkcs8 = pair.to_pkcs8v1().unwrap();
    let spki = AsDer::<PublicKeyX509Der>::as_der(pair.public_key()).unwrap();
    let point = pair.public_key().as_ref();
    let half = (point.len() - 1) / 2;
    TestKey {
        private_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
        public_pem: pem("PUBLIC KEY", spki.as_ref()),
        jwk: json!({
            "kty": "EC",
            "crv": if p384 { "P-384" } else { "P-256" },
            "x": b64u(&point[1..1 + half]),
            "y": b64u(&point[1 + half..]),
        }),
        pkcs1: None,
    }
}

fn ed_key() -> TestKey {
    let pair = Ed25519KeyPair::generate().unwrap();
    // openssl writes PKCS#8 v1 Ed25519 keys; v2 (with the public key) is tested below.
    let pkcs8 = pair.to_pkcs8v1().unwrap();
    let spki = AsDer::<PublicKeyX509Der>::as_der(pair.public_key()).unwrap();
    TestKey {
        private_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
        public_pem: pem("PUBLIC KEY", spki.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64u(pair.public_key().as_ref())}),
        pkcs1: None,
    }
}

static RSA: LazyLock<TestKey> = LazyLock::new(rsa_key);
static RSA2: LazyLock<TestKey> = LazyLock::new(rsa_key);
static P256: LazyLock<TestKey> = LazyLock::new(|| ec_key(false));
static P384: LazyLock<TestKey> = LazyLock::new(|| ec_key(true));
static ED25519: LazyLock<TestKey> = LazyLock::new(ed_key);

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsgate-auth-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hs_config() -> AuthConfig {
    AuthConfig {
        hmac_secret: Some(Secret::from(SECRET)),
        ..AuthConfig::default()
    }
}

fn hs_auth() -> Authenticator {
    Authenticator::new(&hs_config()).unwrap()
}

/// An authenticator over public key files written from `pems` (name, contents).
fn key_auth(dir: &TempDir, files: &[(&str, &str)], algorithms: &[Algorithm]) -> Result<Authenticator, AuthConfigError> {
    Authenticator::new(&AuthConfig {
        public_key_files: files.iter().map(|(name, contents)| dir.file(name, contents)).collect(),
        algorithms: algorithms.to_vec(),
        ..AuthConfig::default()
    })
}

fn hs_options(user: &str) -> MintOptions {
    MintOptions::new(user, MintKey::HmacSecret(Secret::from(SECRET)), now())
}

fn hs_token(user: &str) -> String {
    mint(&hs_options(user)).unwrap()
}

/// A token with exactly this header and these claims, signed with `key` by `alg`.
fn signed(
    header: serde_json::Value,
    claims: serde_json::Value,
    key: &jsonwebtoken::EncodingKey,
    alg: Algorithm,
) -> String {
    let input = format!(
        "{}.{}",
        b64u(header.to_string().as_bytes()),
        b64u(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg.to_jwt()).unwrap();
    format!("{input}.{signature}")
}

/// HS256 over arbitrary claims with the test secret.
fn hs_claims(claims: serde_json::Value) -> String {
    signed(
        json!({"alg": "HS256", "typ": "JWT"}),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::Hs256,
    )
}

/// Claims valid at [`NOW`] for `alice`, with `extra` merged in (a null removes).
fn claims_with(extra: serde_json::Value) -> serde_json::Value {
    let mut claims = json!({"sub": "alice", "iat": NOW, "exp": NOW + 3600});
    for (name, value) in extra.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn verify(auth: &Authenticator, token: &str) -> Result<Identity, AuthError> {
    auth.verify_token(token, now())
}

/// An upgrade request to `target` with extra headers.
fn request(target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut text = format!(
        "GET {target} HTTP/1.1\r\nHost: gw.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

fn authenticate(auth: &Authenticator, target: &str, headers: &[(&str, &str)]) -> Result<Identity, AuthError> {
    let bytes = request(target, headers);
    let request = parse_request(&bytes, &Limits::default(), &HandshakeConfig::default())
        .unwrap()
        .expect("a complete request");
    auth.authenticate(&request, now())
}

// ---- Accepted tokens ----

#[test]
fn hs256_token_is_accepted() {
    let identity = verify(&hs_auth(), &hs_token("alice")).unwrap();
    assert_eq!(
        identity,
        Identity {
            user_id: "alice".to_owned(),
            can_join: None,
            can_publish: None,
            expires_at: Some(at(NOW + 3600)),
            carrier: Carrier::Header,
            generated: false,
        }
    );
    assert!(identity.may_join("anything") && identity.may_publish("anything"));
}

#[test]
fn rs256_es256_es384_and_eddsa_tokens_are_accepted() {
    let dir = TempDir::new();
    let cases: [(&str, &TestKey, Algorithm); 4] = [
        ("rsa", &RSA, Algorithm::Rs256),
        ("p256", &P256, Algorithm::Es256),
        ("p384", &P384, Algorithm::Es384),
        ("ed25519", &ED25519, Algorithm::EdDsa),
    ];
    for (name, key, alg) in cases {
        let auth = key_auth(&dir, &[(&format!("{name}.pub.pem"), &key.public_pem)], &[]).unwrap();
        assert_eq!(
            auth.allowed_algorithms(),
            vec![alg],
            "{name}: the key's usual algorithm only"
        );
        let private = dir.file(&format!("{name}.pem"), &key.private_pem);
        let token = mint(&MintOptions::new("bob", MintKey::PrivateKeyFile(private), now())).unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["alg"], alg.name(), "{name}");
        assert_eq!(verify(&auth, &token).unwrap().user_id, "bob", "{name}");
        // The same public key as a one-key JWKS works too.
        let jwks = json!({"keys": [key.jwk]}).to_string();
        let auth = key_auth(&dir, &[(&format!("{name}.jwks.json"), &jwks)], &[]).unwrap();
        assert_eq!(verify(&auth, &token).unwrap().user_id, "bob", "{name} via JWKS");
    }
}

#[test]
fn pkcs1_rsa_keys_and_pkcs8_v2_ed25519_keys_work() {
    let dir = TempDir::new();
    let (private_pkcs1, public_pkcs1) = RSA.pkcs1.clone().unwrap();
    let auth = key_auth(&dir, &[("rsa1.pub.pem", &public_pkcs1)], &[]).unwrap();
    let private = dir.file("rsa1.pem", &private_pkcs1);
    let token = mint(&MintOptions::new("carol", MintKey::PrivateKeyFile(private), now())).unwrap();
    assert_eq!(verify(&auth, &token).unwrap().user_id, "carol");

    let pair = Ed25519KeyPair::generate().unwrap();
    let v2 = pair.to_pkcs8().unwrap();
    let spki = AsDer::<PublicKeyX509Der>::as_der(pair.public_key()).unwrap();
    let auth = key_auth(&dir, &[("ed.pub.pem", &pem("PUBLIC KEY", spki.as_ref()))], &[]).unwrap();
    let private = dir.file("ed-v2.pem", pem("PRIVATE KEY", v2.as_ref()));
    let token = mint(&MintOptions::new("dave", MintKey::PrivateKeyFile(private), now())).unwrap();
    assert_eq!(verify(&auth, &token).unwrap().user_id, "dave");
}

#[test]
fn one_pem_file_may_hold_several_keys() {
    let dir = TempDir::new();
    let bundle = format!("# rotation: new key first\n{}\n{}", RSA2.public_pem, P256.public_pem);
    let auth = key_auth(&dir, &[("bundle.pem", &bundle)], &[]).unwrap();
    assert_eq!(auth.key_count(), 2);
    assert_eq!(auth.allowed_algorithms(), vec![Algorithm::Rs256, Algorithm::Es256]);
    for key in [&*RSA2, &*P256] {
        let private = dir.file("k.pem", &key.private_pem);
        let token = mint(&MintOptions::new("erin", MintKey::PrivateKeyFile(private), now())).unwrap();
        assert!(verify(&auth, &token).is_ok());
    }
}

#[test]
fn pss_and_hs512_only_when_allowed() {
    let dir = TempDir::new();
    let private = dir.file("rsa.pem", &RSA.private_pem);
    let ps256 = mint(&MintOptions {
        algorithm: Some(Algorithm::Ps256),
        ..MintOptions::new("frank", MintKey::PrivateKeyFile(private), now())
    })
    .unwrap();
    let default = key_auth(&dir, &[("rsa.pub.pem", &RSA.public_pem)], &[]).unwrap();
    assert_eq!(verify(&default, &ps256), Err(AuthError::AlgorithmNotAllowed));
    let pss = key_auth(&dir, &[("rsa.pub.pem", &RSA.public_pem)], &[Algorithm::Ps256]).unwrap();
    assert_eq!(verify(&pss, &ps256).unwrap().user_id, "frank");
    let private = dir.file("rsa.pem", &RSA.private_pem);
    let rs256 = mint(&MintOptions::new("frank", MintKey::PrivateKeyFile(private), now())).unwrap();
    assert_eq!(verify(&pss, &rs256), Err(AuthError::AlgorithmNotAllowed));

    let long = "x".repeat(64);
    let hs512 = mint(&MintOptions {
        algorithm: Some(Algorithm::Hs512),
        ..MintOptions::new("gina", MintKey::HmacSecret(Secret::from(long.as_str())), now())
    })
    .unwrap();
    let config = AuthConfig {
        hmac_secret: Some(Secret::from(long.as_str())),
        ..AuthConfig::default()
    };
    assert_eq!(
        verify(&Authenticator::new(&config).unwrap(), &hs512),
        Err(AuthError::AlgorithmNotAllowed)
    );
    let config = AuthConfig {
        algorithms: vec![Algorithm::Hs512],
        ..config
    };
    assert_eq!(
        verify(&Authenticator::new(&config).unwrap(), &hs512).unwrap().user_id,
        "gina"
    );
}

// ---- Time ----

#[test]
fn expiry_and_not_before_honour_the_leeway_at_both_edges() {
    let auth = hs_auth(); // leeway 30 s
    let exp = NOW + 100;
    let token = hs_claims(claims_with(json!({"exp": exp})));
    assert!(auth.verify_token(&token, at(exp - 1)).is_ok());
    assert!(
        auth.verify_token(&token, at(exp)).is_ok(),
        "expired, but within the leeway"
    );
    assert!(auth.verify_token(&token, at(exp + 29)).is_ok());
    assert!(
        auth.verify_token(&token, at(exp + 29) + Duration::from_millis(999))
            .is_ok(),
        "still before exp + leeway"
    );
    assert_eq!(auth.verify_token(&token, at(exp + 30)), Err(AuthError::Expired));
    assert_eq!(auth.verify_token(&token, at(exp + 10_000)), Err(AuthError::Expired));

    let nbf = NOW + 100;
    let token = hs_claims(claims_with(json!({"nbf": nbf, "exp": nbf + 3600})));
    assert!(auth.verify_token(&token, at(nbf)).is_ok());
    assert!(
        auth.verify_token(&token, at(nbf - 30)).is_ok(),
        "early, but within the leeway"
    );
    assert_eq!(
        auth.verify_token(&token, at(nbf - 30) - Duration::from_millis(1)),
        Err(AuthError::NotYetValid)
    );
    assert_eq!(auth.verify_token(&token, at(nbf - 31)), Err(AuthError::NotYetValid));

    let strict = Authenticator::new(&AuthConfig {
        leeway: Duration::ZERO,
        ..hs_config()
    })
    .unwrap();
    let token = hs_claims(claims_with(json!({"exp": exp, "nbf": NOW})));
    assert!(strict.verify_token(&token, at(exp - 1)).is_ok());
    assert_eq!(
        strict.verify_token(&token, at(exp)),
        Err(AuthError::Expired),
        "RFC 7519: on or after exp"
    );
    assert!(
        strict.verify_token(&token, at(NOW)).is_ok(),
        "RFC 7519: on or after nbf"
    );
    assert_eq!(strict.verify_token(&token, at(NOW - 1)), Err(AuthError::NotYetValid));
}

#[test]
fn expiry_is_required_and_times_must_be_numbers() {
    let auth = hs_auth();
    let cases = [
        (json!({"exp": null}), Err(AuthError::MissingExpiry)),
        // The type confusion behind CVE-2026-25537: a string is not "absent".
        (json!({"exp": "99999999999"}), Err(AuthError::Malformed)),
        (json!({"nbf": "99999999999"}), Err(AuthError::Malformed)),
        (json!({"nbf": {"at": 1}}), Err(AuthError::Malformed)),
        (json!({"exp": true}), Err(AuthError::Malformed)),
        (json!({"exp": NOW as f64 + 10.75}), Ok("alice")),
        (json!({"exp": u64::MAX}), Ok("alice")),
        (json!({"exp": 1e300}), Ok("alice")),
        (json!({"exp": -1}), Err(AuthError::Expired)),
        (json!({"nbf": -1e300}), Ok("alice")),
        (json!({"nbf": 1e300}), Err(AuthError::NotYetValid)),
    ];
    for (extra, expected) in cases {
        let result = verify(&auth, &hs_claims(claims_with(extra.clone())));
        assert_eq!(
            result.as_ref().map(|i| i.user_id.as_str()),
            expected.as_ref().map(|s| *s),
            "{extra}"
        );
    }
    let far = verify(&auth, &hs_claims(claims_with(json!({"exp": u64::MAX})))).unwrap();
    assert!(far.expires_at.unwrap() > at(NOW + 1_000_000_000));
}

// ---- Refused tokens ----

#[test]
fn wrong_signatures_are_refused() {
    let auth = hs_auth();
    let token = hs_token("alice");
    let (input, signature) = token.rsplit_once('.').unwrap();
    let (header, _) = input.split_once('.').unwrap();

    let other_payload = b64u(claims_with(json!({"sub": "mallory"})).to_string().as_bytes());
    assert_eq!(
        verify(&auth, &format!("{header}.{other_payload}.{signature}")),
        Err(AuthError::BadSignature)
    );

    let other_secret = mint(&MintOptions::new(
        "alice",
        MintKey::HmacSecret(Secret::from("another-secret-another-secret-another!")),
        now(),
    ))
    .unwrap();
    assert_eq!(verify(&auth, &other_secret), Err(AuthError::BadSignature));
    assert_eq!(
        verify(&auth, &format!("{input}.{}", &signature[1..])),
        Err(AuthError::BadSignature)
    );
    assert_eq!(
        verify(&auth, &format!("{input}.A")),
        Err(AuthError::BadSignature),
        "not even base64 of a byte"
    );
    assert_eq!(
        verify(&auth, &format!("{input}.")),
        Err(AuthError::BadSignature),
        "unsigned"
    );

    let dir = TempDir::new();
    let auth = key_auth(&dir, &[("rsa.pub.pem", &RSA.public_pem)], &[]).unwrap();
    let private = dir.file("rsa2.pem", &RSA2.private_pem);
    let forged = mint(&MintOptions::new("alice", MintKey::PrivateKeyFile(private), now())).unwrap();
    assert_eq!(verify(&auth, &forged), Err(AuthError::BadSignature));
}

#[test]
fn a_bad_signature_wins_over_bad_claims() {
    // Nothing about the claims may be learnt from a token that is not signed by us.
    let auth = hs_auth();
    let expired = signed(
        json!({"alg": "HS256"}),
        claims_with(json!({"exp": NOW - 1000, "sub": null})),
        &jsonwebtoken::EncodingKey::from_secret(b"not-our-secret-not-our-secret-not-ours"),
        Algorithm::Hs256,
    );
    assert_eq!(verify(&auth, &expired), Err(AuthError::BadSignature));
}

#[test]
fn audience_rules() {
    let with_audience = Authenticator::new(&AuthConfig {
        audience: Some("wsgate".to_owned()),
        ..hs_config()
    })
    .unwrap();
    let without = hs_auth();
    let cases = [
        (json!({"aud": "wsgate"}), Ok(()), Err(AuthError::WrongAudience)),
        (json!({"aud": ["api", "wsgate"]}), Ok(()), Err(AuthError::WrongAudience)),
        (
            json!({"aud": ["api", "Wsgate"]}),
            Err(AuthError::WrongAudience),
            Err(AuthError::WrongAudience),
        ),
        (
            json!({"aud": "api"}),
            Err(AuthError::WrongAudience),
            Err(AuthError::WrongAudience),
        ),
        (
            json!({"aud": []}),
            Err(AuthError::WrongAudience),
            Err(AuthError::WrongAudience),
        ),
        (json!({}), Err(AuthError::WrongAudience), Ok(())),
        (json!({"aud": 7}), Err(AuthError::Malformed), Err(AuthError::Malformed)),
    ];
    for (extra, configured, unconfigured) in cases {
        let token = hs_claims(claims_with(extra.clone()));
        assert_eq!(
            verify(&with_audience, &token).map(drop),
            configured,
            "{extra} with an audience"
        );
        assert_eq!(verify(&without, &token).map(drop), unconfigured, "{extra} without one");
    }
    let minted = mint(&MintOptions {
        audience: Some("wsgate".to_owned()),
        ..hs_options("alice")
    })
    .unwrap();
    assert!(verify(&with_audience, &minted).is_ok());
}

#[test]
fn issuer_rules() {
    let with_issuer = Authenticator::new(&AuthConfig {
        issuer: Some("https://id.example.com".to_owned()),
        ..hs_config()
    })
    .unwrap();
    let without = hs_auth();
    let cases = [
        (json!({"iss": "https://id.example.com"}), Ok(()), Ok(())),
        (
            json!({"iss": "https://id.example.com/"}),
            Err(AuthError::WrongIssuer),
            Ok(()),
        ),
        (
            json!({"iss": "https://evil.example.com"}),
            Err(AuthError::WrongIssuer),
            Ok(()),
        ),
        (json!({}), Err(AuthError::WrongIssuer), Ok(())),
        (
            json!({"iss": ["https://id.example.com"]}),
            Err(AuthError::Malformed),
            Err(AuthError::Malformed),
        ),
    ];
    for (extra, configured, unconfigured) in cases {
        let token = hs_claims(claims_with(extra.clone()));
        assert_eq!(
            verify(&with_issuer, &token).map(drop),
            configured,
            "{extra} with an issuer"
        );
        assert_eq!(verify(&without, &token).map(drop), unconfigured, "{extra} without one");
    }
}

#[test]
fn alg_none_and_other_algorithms_are_refused() {
    let auth = hs_auth();
    let claims = b64u(claims_with(json!({})).to_string().as_bytes());
    for alg in [
        "none", "None", "NONE", "nOnE", "", "hs256", "HS256 ", "RS256", "ES256", "EdDSA", "HS1", "ES512",
    ] {
        let header = b64u(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
        assert_eq!(
            verify(&auth, &format!("{header}.{claims}.")),
            Err(AuthError::AlgorithmNotAllowed),
            "{alg:?}"
        );
        assert_eq!(
            verify(&auth, &format!("{header}.{claims}.c2lnbmF0dXJl")),
            Err(AuthError::AlgorithmNotAllowed),
            "{alg:?} with a signature"
        );
    }
    for header in [
        json!({"typ": "JWT"}),
        json!({"alg": 256}),
        json!({"alg": null}),
        json!(["HS256"]),
    ] {
        let header = b64u(header.to_string().as_bytes());
        assert_eq!(verify(&auth, &format!("{header}.{claims}.")), Err(AuthError::Malformed));
    }
}

#[test]
fn hmac_and_public_key_algorithms_cannot_be_confused() {
    let dir = TempDir::new();
    // The classic attack: an HS256 token whose secret is the server's public key.
    let confused = signed(
        json!({"alg": "HS256"}),
        claims_with(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(RSA.public_pem.as_bytes()),
        Algorithm::Hs256,
    );
    let rsa_only = key_auth(&dir, &[("rsa.pub.pem", &RSA.public_pem)], &[]).unwrap();
    assert_eq!(verify(&rsa_only, &confused), Err(AuthError::AlgorithmNotAllowed));

    // Even with both kinds of key, the public key never serves as an HMAC secret.
    let both = Authenticator::new(&AuthConfig {
        public_key_files: vec![dir.file("rsa.pub.pem", &RSA.public_pem)],
        ..hs_config()
    })
    .unwrap();
    assert_eq!(both.allowed_algorithms(), vec![Algorithm::Hs256, Algorithm::Rs256]);
    assert_eq!(verify(&both, &confused), Err(AuthError::BadSignature));
    // ... and the secret never verifies an RS256 token.
    let rs_with_secret_header = format!(
        "{}.{}",
        b64u(json!({"alg": "RS256"}).to_string().as_bytes()),
        b64u(claims_with(json!({})).to_string().as_bytes())
    );
    let mac = jsonwebtoken::crypto::sign(
        rs_with_secret_header.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    assert_eq!(
        verify(&both, &format!("{rs_with_secret_header}.{mac}")),
        Err(AuthError::BadSignature)
    );

    // Allowing HS256 with only an RSA key is a configuration error, not a hole.
    assert_eq!(
        key_auth(
            &dir,
            &[("rsa.pub.pem", &RSA.public_pem)],
            &[Algorithm::Hs256, Algorithm::Rs256]
        )
        .err(),
        Some(AuthConfigError::AlgorithmWithoutKey(Algorithm::Hs256))
    );
    // So is a public key file given as the secret.
    let err = Authenticator::new(&AuthConfig {
        hmac_secret_file: Some(dir.file("secret", &RSA.public_pem)),
        ..AuthConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("looks like a PEM or JWKS key file"), "{err}");
}

#[test]
fn malformed_tokens() {
    let auth = hs_auth();
    let good = hs_token("alice");
    let (input, signature) = good.rsplit_once('.').unwrap();
    let (header, payload) = input.split_once('.').unwrap();
    let b64json = |v: serde_json::Value| b64u(v.to_string().as_bytes());
    let hs_header = b64json(json!({"alg": "HS256"}));
    let cases: Vec<String> = vec![
        String::new(),
        "abc".to_owned(),
        "a.b".to_owned(),
        format!("{header}.{payload}"),
        format!("{good}.x"),
        format!("{header}..{signature}"),
        format!(".{payload}.{signature}"),
        format!("{header}.{payload}.{signature}="),
        format!("{header}=.{payload}.{signature}"),
        format!("{header}.{payload} .{signature}"),
        format!("{header}.{payload}.{signature}\u{e9}"),
        format!("{header}+.{payload}.{signature}"),
        format!("{}.{payload}.{signature}", b64u(b"not json")),
        format!("{}.{payload}.{signature}", b64u(b"{\"alg\":\"HS256\"")),
        format!("a.{payload}.{signature}"),
        // JWE compact form: five segments.
        format!("{header}.{payload}.{signature}.{signature}.{signature}"),
    ];
    for token in &cases {
        assert_eq!(verify(&auth, token), Err(AuthError::Malformed), "{token:?}");
    }
    // Well signed, but what is signed is not a claims object.
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    for payload in [
        &b"not json"[..],
        b"[1,2]",
        b"\"alice\"",
        b"{\"sub\":1,\"exp\":9999999999}",
    ] {
        let input = format!("{hs_header}.{}", b64u(payload));
        let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
        assert_eq!(
            verify(&auth, &format!("{input}.{signature}")),
            Err(AuthError::Malformed),
            "{payload:?}"
        );
    }
    // A claim given twice is ambiguous: two parsers could read two different tokens.
    let twice = format!(r#"{{"sub":"alice","exp":{},"exp":1}}"#, NOW + 3600);
    let input = format!("{hs_header}.{}", b64u(twice.as_bytes()));
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
    assert_eq!(
        verify(&auth, &format!("{input}.{signature}")),
        Err(AuthError::Malformed)
    );
    // A critical header extension we do not understand.
    let crit = signed(
        json!({"alg": "HS256", "crit": ["exp"], "exp": 1}),
        claims_with(json!({})),
        &key,
        Algorithm::Hs256,
    );
    assert_eq!(verify(&auth, &crit), Err(AuthError::Malformed));
    // Other header members are fine.
    let extra = signed(
        json!({"alg": "HS256", "typ": "at+jwt", "cty": "x", "x5t": "y"}),
        claims_with(json!({})),
        &key,
        Algorithm::Hs256,
    );
    assert!(verify(&auth, &extra).is_ok());
}

#[test]
fn oversized_tokens_are_refused_before_decoding() {
    let auth = hs_auth();
    assert_eq!(
        verify(&auth, &"a".repeat(MAX_TOKEN_BYTES + 1)),
        Err(AuthError::TokenTooLarge)
    );
    assert_eq!(verify(&auth, &"a".repeat(MAX_TOKEN_BYTES)), Err(AuthError::Malformed));
    let rooms: Vec<String> = (0..250)
        .map(|i| format!("room-{i:04}-with-a-rather-long-name-here"))
        .collect();
    let big = mint(&MintOptions {
        join: Some(rooms),
        ..hs_options("alice")
    })
    .unwrap();
    assert!(big.len() > MAX_TOKEN_BYTES);
    assert_eq!(verify(&auth, &big), Err(AuthError::TokenTooLarge));
}

#[test]
fn subject_rules() {
    let auth = hs_auth();
    let cases = [
        (json!({"sub": null}), Err(AuthError::MissingSubject)),
        (json!({"sub": ""}), Err(AuthError::MissingSubject)),
        (json!({"sub": 42}), Err(AuthError::Malformed)),
        (json!({"sub": "a".repeat(MAX_USER_ID_BYTES)}), Ok(())),
        (
            json!({"sub": "a".repeat(MAX_USER_ID_BYTES + 1)}),
            Err(AuthError::InvalidSubject),
        ),
        (
            json!({"sub": "é".repeat(MAX_USER_ID_BYTES / 2 + 1)}),
            Err(AuthError::InvalidSubject),
        ),
        (json!({"sub": "ali\nce"}), Err(AuthError::InvalidSubject)),
        (json!({"sub": "ali\u{7f}ce"}), Err(AuthError::InvalidSubject)),
        (json!({"sub": "Zoë 🦀"}), Ok(())),
    ];
    for (extra, expected) in cases {
        assert_eq!(
            verify(&auth, &hs_claims(claims_with(extra.clone()))).map(drop),
            expected,
            "{extra}"
        );
    }
}

#[test]
fn join_and_publish_claims() {
    let auth = hs_auth();
    let token = hs_claims(claims_with(json!({
        "join": ["lobby", "team-42.*"],
        "publish": [],
    })));
    let identity = verify(&auth, &token).unwrap();
    assert_eq!(
        identity.can_join,
        Some(vec!["lobby".to_owned(), "team-42.*".to_owned()])
    );
    assert_eq!(identity.can_publish, Some(vec![]));
    assert!(identity.may_join("lobby"));
    assert!(!identity.may_join("lobby2"));
    assert!(!identity.may_join("Lobby"));
    assert!(identity.may_join("team-42.general"));
    assert!(identity.may_join("team-42."));
    assert!(!identity.may_join("team-43.general"));
    assert!(!identity.may_publish("lobby"), "an empty list allows nothing");

    let all = verify(&auth, &hs_claims(claims_with(json!({"join": ["*"]})))).unwrap();
    assert!(all.may_join("anything") && all.may_join(""));
    assert!(all.may_publish("anything"), "an absent claim does not restrict");

    let too_many: Vec<String> = (0..=MAX_RIGHTS_ENTRIES).map(|i| i.to_string()).collect();
    for bad in [
        json!({"join": ["a*b"]}),
        json!({"join": ["*a"]}),
        json!({"publish": ["**"]}),
        json!({"publish": [""]}),
        json!({"join": ["x".repeat(MAX_ROOM_PATTERN_BYTES + 1)]}),
        json!({"join": ["a\u{0}"]}),
        json!({"publish": too_many}),
    ] {
        assert_eq!(
            verify(&auth, &hs_claims(claims_with(bad.clone()))),
            Err(AuthError::InvalidRights),
            "{bad}"
        );
    }
    for mistyped in [
        json!({"join": "lobby"}),
        json!({"publish": [1]}),
        json!({"join": {"a": 1}}),
    ] {
        assert_eq!(
            verify(&auth, &hs_claims(claims_with(mistyped.clone()))),
            Err(AuthError::Malformed),
            "{mistyped}"
        );
    }
}

// ---- JWKS and key selection ----

#[test]
fn jwks_with_two_keys_selects_by_kid() {
    let dir = TempDir::new();
    let mut a = RSA.jwk.clone();
    a["kid"] = json!("key-a");
    let mut b = RSA2.jwk.clone();
    b["kid"] = json!("key-b");
    b["alg"] = json!("RS256");
    b["use"] = json!("sig");
    let mut enc = P256.jwk.clone();
    enc["use"] = json!("enc");
    enc["kid"] = json!("key-a"); // skipped, so its kid does not clash
    let jwks = json!({"keys": [a, b, enc]}).to_string();
    let auth = key_auth(&dir, &[("jwks.json", &jwks)], &[]).unwrap();
    assert_eq!(auth.key_count(), 2);

    let private_a = dir.file("a.pem", &RSA.private_pem);
    let private_b = dir.file("b.pem", &RSA2.private_pem);
    let token = |private: &PathBuf, kid: Option<&str>| {
        mint(&MintOptions {
            kid: kid.map(str::to_owned),
            ..MintOptions::new("kim", MintKey::PrivateKeyFile(private.clone()), now())
        })
        .unwrap()
    };
    assert!(verify(&auth, &token(&private_a, Some("key-a"))).is_ok());
    assert!(verify(&auth, &token(&private_b, Some("key-b"))).is_ok());
    assert!(
        verify(&auth, &token(&private_a, None)).is_ok(),
        "no kid: every RSA key is tried"
    );
    assert!(verify(&auth, &token(&private_b, None)).is_ok());
    assert_eq!(
        verify(&auth, &token(&private_a, Some("key-b"))),
        Err(AuthError::BadSignature),
        "a kid picks exactly one key"
    );
    assert_eq!(
        verify(&auth, &token(&private_a, Some("key-c"))),
        Err(AuthError::UnknownKey)
    );

    // A kid nobody has still reaches the keys that have no kid (PEM keys).
    let with_pem = key_auth(&dir, &[("jwks.json", &jwks), ("p256.pub.pem", &P256.public_pem)], &[]).unwrap();
    let private_ec = dir.file("ec.pem", &P256.private_pem);
    assert!(verify(&with_pem, &token(&private_ec, Some("rotated-away"))).is_ok());
    assert_eq!(
        verify(&with_pem, &token(&private_a, Some("key-c"))),
        Err(AuthError::UnknownKey)
    );
}

#[test]
fn a_token_for_a_key_type_we_lack_is_refused() {
    let dir = TempDir::new();
    let mut ec = P256.jwk.clone();
    ec["kid"] = json!("k1");
    let auth = key_auth(&dir, &[("jwks.json", &json!({"keys": [ec]}).to_string())], &[]).unwrap();
    let private = dir.file("rsa.pem", &RSA.private_pem);
    let rs = mint(&MintOptions {
        kid: Some("k1".to_owned()),
        ..MintOptions::new("x", MintKey::PrivateKeyFile(private), now())
    })
    .unwrap();
    assert_eq!(verify(&auth, &rs), Err(AuthError::AlgorithmNotAllowed));
}

#[test]
fn jwks_errors_name_the_file_and_the_key() {
    let dir = TempDir::new();
    let with = |extra: serde_json::Value| {
        let mut key = RSA.jwk.clone();
        for (k, v) in extra.as_object().unwrap() {
            key[k] = v.clone();
        }
        key
    };
    let small_n = b64u(&[0xff; 128]);
    let cases = [
        (json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}), "kty \"oct\""),
        (json!({"keys": [with(json!({"d": "AQAB"}))]}), "private key material"),
        (
            json!({"keys": [RSA.jwk, with(json!({"kid": "k", "alg": "ES256"}))]}),
            "key 2 (kid \"k\"): alg ES256 does not fit",
        ),
        (
            json!({"keys": [with(json!({"alg": "RSA-OAEP"}))]}),
            "not a supported signature algorithm",
        ),
        (json!({"keys": [with(json!({"n": small_n}))]}), "RSA key of 1024 bits"),
        (json!({"keys": [with(json!({"n": "!!"}))]}), "\"n\" is not base64url"),
        (
            json!({"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}]}),
            "EC curve \"P-521\"",
        ),
        (
            json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}),
            "32 bytes each",
        ),
        (
            json!({"keys": [{"kty": "OKP", "crv": "Ed448", "x": "AA"}]}),
            "OKP curve \"Ed448\"",
        ),
        (json!({"keys": [{"kty": "OKP", "crv": "Ed25519"}]}), "without \"x\""),
        (json!({"keys": [{"n": "AA"}]}), "no \"kty\""),
        (json!({"keys": [with(json!({"use": "enc"}))]}), "holds no signing key"),
        (json!({"keys": {}}), "\"keys\" is not an array"),
        (json!({"issuer": "x"}), "JSON without \"keys\""),
        (json!({"keys": [with(json!({"kid": 5}))]}), "key 1: invalid type"),
    ];
    for (jwks, expected) in cases {
        let path = dir.file("jwks.json", jwks.to_string());
        let err = Authenticator::new(&AuthConfig {
            public_key_files: vec![path.clone()],
            ..AuthConfig::default()
        })
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("auth_public_key_files: {}: ", path.display())),
            "{message}"
        );
        assert!(message.contains(expected), "{message} should say {expected:?}");
    }
    // A single JWK (not a set) is accepted.
    assert!(key_auth(&dir, &[("one.json", &ED25519.jwk.to_string())], &[]).is_ok());
    // Two keys with one kid, across files.
    let mut a = RSA.jwk.clone();
    a["kid"] = json!("dup");
    let mut b = P256.jwk.clone();
    b["kid"] = json!("dup");
    let err = key_auth(
        &dir,
        &[
            ("a.json", &json!({"keys": [a]}).to_string()),
            ("b.json", &json!({"keys": [b]}).to_string()),
        ],
        &[],
    )
    .err();
    assert_eq!(err, Some(AuthConfigError::DuplicateKid { kid: "dup".to_owned() }));
}

#[test]
fn key_file_errors_name_the_file_and_say_what_to_do() {
    let dir = TempDir::new();
    let p256 = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let sec1 = AsDer::<EcPrivateKeyRfc5915Der>::as_der(&p256.private_key()).unwrap();
    let small_rsa = {
        // SEQUENCE { INTEGER (1024-bit n), INTEGER 65537 }
        let mut n = vec![0x02, 0x81, 0x81, 0x00];
        n.extend([0xc3; 128]);
        let e = [0x02, 0x03, 0x01, 0x00, 0x01];
        let mut der = vec![0x30, 0x81, (n.len() + e.len()) as u8];
        der.extend(n);
        der.extend(e);
        pem("RSA PUBLIC KEY", &der)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("private.pem", RSA.private_pem.clone(), "is a private key (PRIVATE KEY)"),
        (
            "sec1.pem",
            pem("EC PRIVATE KEY", sec1.as_ref()),
            "openssl pkey -in private.pem -pubout",
        ),
        ("cert.pem", pem("CERTIFICATE", b"\x30\x00"), "is a certificate"),
        ("small.pem", small_rsa, "RSA key of 1024 bits; 2048 to 8192"),
        (
            "junk.pem",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_owned(),
            "malformed public key",
        ),
        (
            "unterminated.pem",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n".to_owned(),
            "has no END line",
        ),
        (
            "mismatch.pem",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_owned(),
            "ends with END PRIVATE KEY",
        ),
        (
            "notb64.pem",
            "-----BEGIN PUBLIC KEY-----\n@@@@\n-----END PUBLIC KEY-----\n".to_owned(),
            "not valid base64",
        ),
        (
            "encrypted.pem",
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END RSA PRIVATE KEY-----\n".to_owned(),
            "encrypted",
        ),
        ("empty.pem", String::new(), "neither a PEM file"),
        ("text.txt", "hello".to_owned(), "neither a PEM file"),
        (
            "params.pem",
            pem("EC PARAMETERS", b"\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07"),
            "holds no signing key",
        ),
        (
            "ssh.pub",
            "ssh-ed25519 AAAAC3Nza alice@host".to_owned(),
            "neither a PEM file",
        ),
    ];
    for (name, contents, expected) in cases {
        let path = dir.file(name, &contents);
        let err = Authenticator::new(&AuthConfig {
            public_key_files: vec![path.clone()],
            ..AuthConfig::default()
        })
        .unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{name}: {message}");
        assert!(message.contains(expected), "{name}: {message} should say {expected:?}");
    }
    let binary = dir.file("key.der", [0x30, 0x82, 0xff, 0xfe, 0x80]);
    let err = key_auth(&dir, &[], &[]).map(drop).unwrap_err();
    assert_eq!(err, AuthConfigError::NoKeys);
    let err = Authenticator::new(&AuthConfig {
        public_key_files: vec![binary],
        ..AuthConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("not UTF-8 text (a DER file?"), "{err}");
    let missing = dir.0.join("missing.pem");
    let err = Authenticator::new(&AuthConfig {
        public_key_files: vec![missing.clone()],
        ..AuthConfig::default()
    })
    .unwrap_err();
    assert!(matches!(&err, AuthConfigError::File { path, .. } if *path == missing));
    assert!(err.to_string().contains("cannot open"), "{err}");
    // Too many keys: each could cost a signature check per token.
    let many = (0..=MAX_KEYS).map(|_| ED25519.public_pem.as_str()).collect::<String>();
    let err = key_auth(&dir, &[("many.pem", &many)], &[]).err().unwrap();
    assert!(err.to_string().contains("at most 32"), "{err}");
}

#[test]
fn config_errors() {
    let dir = TempDir::new();
    let invalid = |config: AuthConfig| Authenticator::new(&config).unwrap_err().to_string();
    assert!(invalid(AuthConfig::default()).contains("auth_mode is jwt but no key is configured"));
    assert!(
        invalid(AuthConfig {
            hmac_secret_file: Some(dir.file("s", SECRET)),
            ..hs_config()
        })
        .contains("set together with auth_hmac_secret_file")
    );
    let short = invalid(AuthConfig {
        hmac_secret: Some(Secret::from("short-but-not-empty")),
        ..AuthConfig::default()
    });
    assert!(
        short.starts_with("invalid auth_hmac_secret: 19 bytes; at least 32"),
        "{short}"
    );
    let path = dir.file("short", "short\n");
    let short = invalid(AuthConfig {
        hmac_secret_file: Some(path.clone()),
        ..AuthConfig::default()
    });
    assert!(
        short.starts_with(&format!("auth_hmac_secret_file: {}: 5 bytes", path.display())),
        "{short}"
    );
    let hs512 = invalid(AuthConfig {
        algorithms: vec![Algorithm::Hs256, Algorithm::Hs512],
        ..hs_config()
    });
    assert!(
        hs512.contains("40 bytes; the allowed HMAC algorithms need at least 64"),
        "{hs512}"
    );
    assert!(
        invalid(AuthConfig {
            leeway: Duration::from_secs(301),
            ..hs_config()
        })
        .starts_with("invalid auth_leeway")
    );
    for name in ["", "a&b", "a=b", "tok en", "x".repeat(65).as_str()] {
        assert!(
            invalid(AuthConfig {
                query_param: Some(name.to_owned()),
                ..hs_config()
            })
            .starts_with("invalid auth_query_param"),
            "{name:?}"
        );
    }
    assert!(
        invalid(AuthConfig {
            issuer: Some(String::new()),
            ..hs_config()
        })
        .starts_with("invalid auth_issuer")
    );
    assert!(
        invalid(AuthConfig {
            audience: Some(String::new()),
            ..hs_config()
        })
        .starts_with("invalid auth_audience")
    );
    assert!(
        invalid(AuthConfig {
            algorithms: vec![Algorithm::EdDsa],
            ..hs_config()
        })
        .contains("auth_algorithms lists EdDSA")
    );

    // A secret file's trailing newline is not part of the secret.
    let auth = Authenticator::new(&AuthConfig {
        hmac_secret_file: Some(dir.file("secret", format!("{SECRET}\r\n"))),
        ..AuthConfig::default()
    })
    .unwrap();
    assert!(verify(&auth, &hs_token("alice")).is_ok());
    let minted = mint(&MintOptions::new(
        "alice",
        MintKey::HmacSecretFile(dir.file("s2", format!("{SECRET}\n"))),
        now(),
    ))
    .unwrap();
    assert!(verify(&auth, &minted).is_ok());

    assert!(check_subprotocols(&["chat.v1".to_owned(), "bearer".to_owned()]).is_ok());
    let err = check_subprotocols(&["chat.v1".to_owned(), "bearer.x".to_owned()]).unwrap_err();
    assert!(
        err.to_string().starts_with("invalid subprotocols: \"bearer.x\""),
        "{err}"
    );
}

#[test]
fn config_spellings() {
    assert_eq!("none".parse(), Ok(AuthMode::None));
    assert_eq!(" JWT ".parse(), Ok(AuthMode::Jwt));
    assert!("off".parse::<AuthMode>().is_err());
    assert_eq!(AuthMode::default(), AuthMode::Jwt);
    for alg in Algorithm::ALL {
        assert_eq!(alg.name().parse(), Ok(alg));
        assert_eq!(alg.name().to_ascii_lowercase().parse(), Ok(alg));
        assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
        assert_eq!(alg.to_string(), alg.name());
    }
    assert_eq!(
        Algorithm::from_name("hs256"),
        None,
        "alg values in tokens are case-sensitive"
    );
    let err = "none".parse::<Algorithm>().unwrap_err();
    assert!(err.starts_with("one of HS256, HS384"), "{err}");
    let defaults = AuthConfig::default();
    assert_eq!(defaults.leeway, Duration::from_secs(30));
    assert_eq!(defaults.query_param.as_deref(), Some("token"));
    assert!(defaults.subprotocol_carrier);
    // One config key per field of AuthConfig.
    assert_eq!(
        crate::config::KEYS.iter().filter(|k| k.starts_with("auth_")).count(),
        10
    );
}

// ---- Carriers ----

#[test]
fn each_carrier_delivers_the_token() {
    let auth = hs_auth();
    let token = hs_token("alice");
    let header = authenticate(&auth, "/ws", &[("Authorization", &format!("Bearer {token}"))]).unwrap();
    assert_eq!((header.user_id.as_str(), header.carrier), ("alice", Carrier::Header));
    let lowercase = authenticate(&auth, "/ws", &[("Authorization", &format!("bearer   {token} "))]).unwrap();
    assert_eq!(lowercase.carrier, Carrier::Header);
    let query = authenticate(&auth, &format!("/ws?room=a&token={token}"), &[]).unwrap();
    assert_eq!((query.user_id.as_str(), query.carrier), ("alice", Carrier::Query));
    let encoded = token.replace('.', "%2E");
    assert_eq!(
        authenticate(&auth, &format!("/ws?token={encoded}"), &[])
            .unwrap()
            .carrier,
        Carrier::Query
    );
    let protocols = format!("chat.v1, bearer.{token}");
    let sub = authenticate(&auth, "/ws", &[("Sec-WebSocket-Protocol", &protocols)]).unwrap();
    assert_eq!((sub.user_id.as_str(), sub.carrier), ("alice", Carrier::Subprotocol));
    // Across repeated headers too.
    let sub = authenticate(
        &auth,
        "/ws",
        &[
            ("Sec-WebSocket-Protocol", "chat.v1"),
            ("Sec-WebSocket-Protocol", &format!("bearer.{token}")),
        ],
    )
    .unwrap();
    assert_eq!(sub.carrier, Carrier::Subprotocol);
}

#[test]
fn carriers_are_tried_in_order_header_query_subprotocol() {
    let auth = hs_auth();
    let (alice, bob, carol) = (hs_token("alice"), hs_token("bob"), hs_token("carol"));
    let user = |target: &str, headers: &[(&str, &str)]| authenticate(&auth, target, headers).map(|i| i.user_id);
    let bearer = format!("Bearer {alice}");
    let protocol = format!("bearer.{carol}");
    let all = [
        ("Authorization", bearer.as_str()),
        ("Sec-WebSocket-Protocol", protocol.as_str()),
    ];
    assert_eq!(user(&format!("/ws?token={bob}"), &all), Ok("alice".to_owned()));
    assert_eq!(user(&format!("/ws?token={bob}"), &all[1..]), Ok("bob".to_owned()));
    assert_eq!(user("/ws", &all[1..]), Ok("carol".to_owned()));
    // The first carrier that holds a token decides, even if its token is bad.
    let bad = format!("Bearer {}x", &alice[..alice.len() - 1]);
    assert_eq!(
        user(&format!("/ws?token={bob}"), &[("Authorization", &bad)]),
        Err(AuthError::BadSignature)
    );
    // Another scheme is not ours: browsers replay Basic credentials on their own.
    assert_eq!(
        user(
            &format!("/ws?token={bob}"),
            &[("Authorization", "Basic YWxpY2U6cGFzcw==")]
        ),
        Ok("bob".to_owned())
    );
    assert_eq!(
        user("/ws", &[("Authorization", "Basic YWxpY2U6cGFzcw==")]),
        Err(AuthError::Missing)
    );
    // Broken carriers.
    for value in ["Bearer", "Bearer ", "Bearer a b", "Bearer a,b"] {
        assert_eq!(
            user(&format!("/ws?token={bob}"), &[("Authorization", value)]),
            Err(AuthError::Malformed),
            "{value}"
        );
    }
    assert_eq!(user("/ws?token=", &[]), Err(AuthError::Malformed));
    assert_eq!(user("/ws?token", &[]), Err(AuthError::Malformed));
    assert_eq!(
        user("/ws", &[("Sec-WebSocket-Protocol", "chat, bearer.")]),
        Err(AuthError::Malformed)
    );
    let two = format!("bearer.{alice}, bearer.{bob}");
    assert_eq!(
        user("/ws", &[("Sec-WebSocket-Protocol", &two)]),
        Err(AuthError::Malformed)
    );
    assert_eq!(
        user("/ws", &[("Sec-WebSocket-Protocol", "chat.v1")]),
        Err(AuthError::Missing)
    );
    assert_eq!(user("/ws?room=lobby", &[]), Err(AuthError::Missing));
}

#[test]
fn carriers_can_be_configured() {
    let token = hs_token("alice");
    let only_header = Authenticator::new(&AuthConfig {
        query_param: None,
        subprotocol_carrier: false,
        ..hs_config()
    })
    .unwrap();
    assert_eq!(
        authenticate(&only_header, &format!("/ws?token={token}"), &[]),
        Err(AuthError::Missing)
    );
    let protocol = format!("bearer.{token}");
    assert_eq!(
        authenticate(&only_header, "/ws", &[("Sec-WebSocket-Protocol", &protocol)]),
        Err(AuthError::Missing)
    );
    let renamed = Authenticator::new(&AuthConfig {
        query_param: Some("access_token".to_owned()),
        ..hs_config()
    })
    .unwrap();
    assert_eq!(
        authenticate(&renamed, &format!("/ws?token={token}"), &[]),
        Err(AuthError::Missing)
    );
    assert_eq!(
        authenticate(&renamed, &format!("/ws?access_token={token}"), &[]).map(|i| i.carrier),
        Ok(Carrier::Query)
    );
}

#[test]
fn the_token_subprotocol_is_never_selected_or_echoed() {
    let auth = hs_auth();
    let token = hs_token("alice");
    let cfg = HandshakeConfig {
        subprotocols: vec!["chat.v1".to_owned()],
        ..HandshakeConfig::default()
    };
    check_subprotocols(&cfg.subprotocols).unwrap();
    for offered in [format!("bearer.{token}, chat.v1"), format!("chat.v1, bearer.{token}")] {
        let bytes = request("/ws", &[("Sec-WebSocket-Protocol", &offered)]);
        let request = parse_request(&bytes, &Limits::default(), &cfg).unwrap().unwrap();
        assert_eq!(request.selected_protocol(), Some("chat.v1"));
        assert_eq!(
            auth.authenticate(&request, now()).unwrap().carrier,
            Carrier::Subprotocol
        );
        let mut response = Vec::new();
        request.write_response(&mut response);
        let response = String::from_utf8(response).unwrap();
        assert!(
            response.contains("\r\nSec-WebSocket-Protocol: chat.v1\r\n"),
            "{response}"
        );
        assert!(
            !response.contains(&token) && !response.contains("bearer."),
            "{response}"
        );
    }
    // With no protocol configured, none is selected (a browser then needs one it offers).
    let bytes = request("/ws", &[("Sec-WebSocket-Protocol", &format!("bearer.{token}"))]);
    let request = parse_request(&bytes, &Limits::default(), &HandshakeConfig::default())
        .unwrap()
        .unwrap();
    assert_eq!(request.selected_protocol(), None);
}

// ---- The 401 ----

#[test]
fn every_refusal_is_a_well_formed_401_without_the_token() {
    let auth = hs_auth();
    let token = hs_token("alice");
    let tampered = format!("{}x", &token[..token.len() - 1]);
    let target = format!("/ws?token={tampered}");
    let error = authenticate(&auth, &target, &[]).unwrap_err();
    assert_eq!(error, AuthError::BadSignature);
    let mut out = Vec::new();
    Refused::Unauthorized(error).write_response(&mut out);
    let response = String::from_utf8(out).unwrap();
    assert!(!response.contains(&tampered[..20]) && !response.contains(&token[..20]));

    for &error in AuthError::ALL {
        let mut out = Vec::new();
        Refused::Unauthorized(error).write_response(&mut out);
        let response = String::from_utf8(out).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n"),
            "{error:?}"
        );
        assert!(
            head.contains(&format!("\r\nWWW-Authenticate: {}", error.www_authenticate())),
            "{error:?}"
        );
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        assert_eq!(body, format!("{}\n", error.reason()));
        assert_eq!(error.status(), Status::Unauthorized);
    }
}

#[test]
fn labels_reasons_and_challenges() {
    let mut labels: Vec<&str> = AuthError::ALL.iter().map(|e| e.label()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), AuthError::ALL.len(), "labels are unique");
    for &error in AuthError::ALL {
        assert!(
            error.label().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{error:?}"
        );
        assert_eq!(error.to_string(), error.reason());
        // RFC 6750 section 3: error_description is NQSCHAR.
        assert!(
            error
                .reason()
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\'),
            "{error:?}"
        );
        let challenge = error.www_authenticate();
        assert!(challenge.starts_with(&format!("Bearer realm=\"{REALM}\"")));
        if error == AuthError::Missing {
            assert_eq!(challenge, "Bearer realm=\"wsgate\"");
        } else {
            assert_eq!(
                challenge,
                format!(
                    "Bearer realm=\"wsgate\", error=\"invalid_token\", error_description=\"{}\"",
                    error.reason()
                )
            );
        }
    }
    for carrier in [
        Carrier::Header,
        Carrier::Query,
        Carrier::Subprotocol,
        Carrier::Anonymous,
    ] {
        assert!(!carrier.label().is_empty());
    }
}

// ---- No secret or token in any output ----

#[test]
fn secrets_and_tokens_never_appear_in_debug_or_display() {
    let dir = TempDir::new();
    let secret = "SUPERSECRET-do-not-print-SUPERSECRET-0123";
    let config = AuthConfig {
        hmac_secret: Some(Secret::from(secret)),
        public_key_files: vec![dir.file("ec.pub.pem", &P256.public_pem)],
        ..AuthConfig::default()
    };
    let auth = Authenticator::new(&config).unwrap();
    let options = MintOptions::new("alice", MintKey::HmacSecret(Secret::from(secret)), now());
    let token = mint(&options).unwrap();
    let identity = auth.verify_token(&token, now()).unwrap();
    let args = TokenArgs {
        user: "alice".to_owned(),
        ttl: DEFAULT_LIFETIME,
        issuer: None,
        audience: None,
        join: None,
        publish: None,
        hmac_secret: Some(secret.to_owned()),
        hmac_secret_file: None,
        private_key_file: None,
        alg: None,
        kid: None,
    };
    let mut printed = vec![
        format!("{config:?}"),
        format!("{auth:?}"),
        format!("{options:?}"),
        format!("{:?}", options.key),
        format!("{args:?}"),
        format!("{identity:?}"),
        format!("{:?}", Secret::from(secret)),
    ];
    for &error in AuthError::ALL {
        printed.push(format!("{error:?} {error}"));
    }
    let short = Authenticator::new(&AuthConfig {
        hmac_secret: Some(Secret::from("SUPERSECRET")),
        ..AuthConfig::default()
    })
    .unwrap_err();
    printed.push(format!("{short:?} {short}"));
    let pem_secret = Authenticator::new(&AuthConfig {
        hmac_secret: Some(Secret::from(P256.public_pem.as_str())),
        ..AuthConfig::default()
    })
    .unwrap_err();
    printed.push(format!("{pem_secret:?} {pem_secret}"));
    let mint_error = mint(&MintOptions {
        algorithm: Some(Algorithm::Hs512),
        ..options.clone()
    })
    .unwrap_err();
    printed.push(format!("{mint_error:?} {mint_error}"));
    let body = P256.public_pem.lines().nth(1).unwrap();
    let signature = token.rsplit('.').next().unwrap();
    for text in &printed {
        assert!(!text.contains("SUPERSECRET"), "{text}");
        assert!(!text.contains(signature) && !text.contains(&token), "{text}");
        assert!(!text.contains(body), "key bytes in {text}");
    }
    assert!(printed[0].contains("<redacted>") && printed[4].contains("<redacted>"));
    assert!(
        printed[1].contains("auth_hmac_secret: HMAC secret {HS256}"),
        "{}",
        printed[1]
    );
    assert!(printed[1].contains("ec.pub.pem: EC P-256 {ES256}"), "{}", printed[1]);
}

// ---- Anonymous mode ----

#[test]
fn anonymous_mode_admits_everybody() {
    let auth = Authenticator::new(&AuthConfig {
        mode: AuthMode::None,
        // Ignored in this mode, even though the file does not exist.
        public_key_files: vec![PathBuf::from("/nonexistent/key.pem")],
        ..AuthConfig::default()
    })
    .unwrap();
    assert_eq!(auth.mode(), AuthMode::None);
    assert!(auth.allowed_algorithms().is_empty());
    let first = authenticate(&auth, "/ws", &[]).unwrap();
    let second = authenticate(&auth, "/ws", &[("Authorization", "Bearer whatever")]).unwrap();
    assert_eq!(
        first,
        Identity {
            user_id: "anon-1".to_owned(),
            can_join: None,
            can_publish: None,
            expires_at: None,
            carrier: Carrier::Anonymous,
            generated: true,
        }
    );
    assert_eq!(second.user_id, "anon-2");
    assert_eq!(
        authenticate(&auth, "/ws?user=bench-17", &[]).unwrap().user_id,
        "bench-17"
    );
    assert_eq!(authenticate(&auth, "/ws?user=a%20b", &[]).unwrap().user_id, "a b");
    assert_eq!(authenticate(&auth, "/ws?user=", &[]), Err(AuthError::MissingSubject));
    assert_eq!(
        authenticate(&auth, "/ws?user=a%0Ab", &[]),
        Err(AuthError::InvalidSubject)
    );
    assert_eq!(
        auth.verify_token(&hs_token("alice"), now()),
        Err(AuthError::AlgorithmNotAllowed)
    );
}

#[test]
fn authenticator_is_shared_by_shards() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Authenticator>();
    send_sync::<Identity>();
    send_sync::<AuthError>();
    let auth = std::sync::Arc::new(hs_auth());
    let token = hs_token("alice");
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (auth, token) = (auth.clone(), token.clone());
            std::thread::spawn(move || auth.verify_token(&token, now()).map(|i| i.user_id))
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), Ok("alice".to_owned()));
    }
}

// ---- Minting ----

#[test]
fn minted_tokens_carry_the_requested_claims() {
    let auth = Authenticator::new(&AuthConfig {
        issuer: Some("wsgate-cli".to_owned()),
        audience: Some("wsgate".to_owned()),
        ..hs_config()
    })
    .unwrap();
    let options = MintOptions {
        lifetime: Duration::from_secs(900),
        not_before: Some(at(NOW - 5)),
        issuer: Some("wsgate-cli".to_owned()),
        audience: Some("wsgate".to_owned()),
        join: Some(vec!["lobby".to_owned(), "team.*".to_owned()]),
        publish: Some(vec!["lobby".to_owned()]),
        kid: Some("k1".to_owned()),
        ..hs_options("alice")
    };
    let token = mint(&options).unwrap();
    let identity = verify(&auth, &token).unwrap();
    assert_eq!(identity.expires_at, Some(at(NOW + 900)));
    assert!(identity.may_join("team.dev") && !identity.may_publish("team.dev"));
    let payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(
        payload,
        json!({
            "sub": "alice", "iat": NOW, "exp": NOW + 900, "nbf": NOW - 5,
            "iss": "wsgate-cli", "aud": "wsgate",
            "join": ["lobby", "team.*"], "publish": ["lobby"],
        })
    );
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header, json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}));
}

#[test]
fn mint_options_are_checked() {
    let dir = TempDir::new();
    let rsa = dir.file("rsa.pem", &RSA.private_pem);
    let p256 = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let sec1 = AsDer::<EcPrivateKeyRfc5915Der>::as_der(&p256.private_key()).unwrap();
    let sec1 = dir.file("sec1.pem", pem("EC PRIVATE KEY", sec1.as_ref()));
    let public = dir.file("pub.pem", &RSA.public_pem);
    let two = dir.file("two.pem", format!("{}{}", RSA.private_pem, P256.private_pem));
    let cases: Vec<(MintOptions, &str)> = vec![
        (hs_options(""), "--user: token has no sub claim"),
        (hs_options(&"u".repeat(257)), "--user: token sub claim is too long"),
        (
            MintOptions {
                lifetime: Duration::ZERO,
                ..hs_options("a")
            },
            "--ttl",
        ),
        (
            MintOptions {
                lifetime: Duration::from_secs(367 * 86_400),
                ..hs_options("a")
            },
            "--ttl",
        ),
        (
            MintOptions {
                join: Some(vec!["a*b".to_owned()]),
                ..hs_options("a")
            },
            "--join",
        ),
        (
            MintOptions {
                issuer: Some(String::new()),
                ..hs_options("a")
            },
            "--issuer: empty",
        ),
        (
            MintOptions {
                algorithm: Some(Algorithm::Rs256),
                ..hs_options("a")
            },
            "--alg: RS256 cannot be used with a HMAC secret key",
        ),
        (
            MintOptions {
                algorithm: Some(Algorithm::Es256),
                ..MintOptions::new("a", MintKey::PrivateKeyFile(rsa), now())
            },
            "--alg: ES256 cannot be used with a RSA (2048 bits) key",
        ),
        (
            MintOptions::new("a", MintKey::HmacSecret(Secret::from("short")), now()),
            "--hmac-secret: 5 bytes",
        ),
        (
            MintOptions::new("a", MintKey::PrivateKeyFile(sec1), now()),
            "openssl pkcs8 -topk8",
        ),
        (
            MintOptions::new("a", MintKey::PrivateKeyFile(public), now()),
            "holds a PUBLIC KEY",
        ),
        (
            MintOptions::new("a", MintKey::PrivateKeyFile(two), now()),
            "more than one private key",
        ),
        (
            MintOptions::new("a", MintKey::PrivateKeyFile(dir.0.join("nope")), now()),
            "cannot open",
        ),
    ];
    for (options, expected) in cases {
        let err = mint(&options).unwrap_err();
        assert!(err.to_string().contains(expected), "{err} should say {expected:?}");
        let code = if matches!(err, MintError::Invalid { .. }) { 2 } else { 1 };
        assert_eq!(err.exit_code(), code);
    }
}

#[test]
fn token_args_parse_and_mint() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: TokenArgs,
    }
    use clap::Parser as _;
    let dir = TempDir::new();
    let secret = dir.file("secret", SECRET);
    let secret = secret.to_str().unwrap();
    let parse = |extra: &[&str]| {
        let mut argv = vec!["token", "--user", "alice"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|cli| cli.args)
    };
    let args = parse(&[
        "--ttl",
        "15m",
        "--join",
        "lobby,team.*",
        "--join",
        "x",
        "--hmac-secret-file",
        secret,
    ])
    .unwrap();
    assert_eq!(args.ttl, Duration::from_secs(900));
    let token = mint(&args.to_options(now()).unwrap()).unwrap();
    let identity = verify(&hs_auth(), &token).unwrap();
    assert_eq!(identity.expires_at, Some(at(NOW + 900)));
    assert_eq!(
        identity.can_join,
        Some(vec!["lobby".to_owned(), "team.*".to_owned(), "x".to_owned()])
    );
    assert_eq!(identity.can_publish, None);

    let args = parse(&["--publish=", "--hmac-secret-file", secret]).unwrap();
    assert_eq!(args.ttl, DEFAULT_LIFETIME);
    assert_eq!(args.to_options(now()).unwrap().publish, Some(vec![]));

    let args = parse(&["--alg", "es256", "--private-key-file", "k.pem"]).unwrap();
    assert_eq!(args.alg, Some(Algorithm::Es256));

    for ttl in ["0s", "90", "1y", "367d", "-1h", "1.5h"] {
        assert!(parse(&["--ttl", ttl, "--hmac-secret-file", secret]).is_err(), "{ttl}");
    }
    assert!(parse(&["--alg", "none", "--hmac-secret-file", secret]).is_err());
    assert!(
        Cli::try_parse_from(["token", "--hmac-secret-file", secret]).is_err(),
        "--user is required"
    );

    let no_key = parse(&[]).unwrap().to_options(now()).unwrap_err();
    assert_eq!(no_key.exit_code(), 2);
    assert!(no_key.to_string().contains("no key"), "{no_key}");
    let two_keys = parse(&["--hmac-secret-file", secret, "--private-key-file", "k.pem"])
        .unwrap()
        .to_options(now())
        .unwrap_err();
    assert!(two_keys.to_string().contains("more than one key"), "{two_keys}");
}

// ---- Properties ----

/// A valid token, for the mutation property.
static VALID: LazyLock<String> = LazyLock::new(|| hs_token("alice"));

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_strings_as_tokens_never_panic(token in any::<String>()) {
        fuzz_verify_token(token.as_bytes());
        let auth = hs_auth();
        prop_assert!(auth.verify_token(&token, now()).is_err());
    }

    #[test]
    fn arbitrary_three_segment_tokens_never_panic(
        header in prop::collection::vec(any::<u8>(), 0..64),
        payload in prop::collection::vec(any::<u8>(), 0..128),
        signature in prop::collection::vec(any::<u8>(), 0..80),
        alg in prop::sample::select(vec!["HS256", "RS256", "none", "EdDSA", "ES256"]),
        use_json_header in any::<bool>(),
    ) {
        let header = if use_json_header {
            json!({"alg": alg, "kid": String::from_utf8_lossy(&header)}).to_string().into_bytes()
        } else {
            header
        };
        let token = format!("{}.{}.{}", b64u(&header), b64u(&payload), b64u(&signature));
        fuzz_verify_token(token.as_bytes());
    }

    #[test]
    fn mutated_tokens_are_refused(
        index in any::<prop::sample::Index>(),
        byte in prop::sample::select(b"AZaz09-_.=+/ \x00".to_vec()),
    ) {
        let mut token = VALID.clone().into_bytes();
        let at = index.index(token.len());
        prop_assume!(token[at] != byte);
        token[at] = byte;
        let token = String::from_utf8(token).unwrap();
        let result = hs_auth().verify_token(&token, now());
        // Flipping the last character of a signature can leave its decoded bytes
        // unchanged (base64 padding bits); every other change must be refused.
        if result.is_ok() {
            prop_assert_eq!(at, VALID.len() - 1);
        }
    }

    #[test]
    fn arbitrary_key_files_never_panic(data in prop::collection::vec(any::<u8>(), 0..512), wrap in 0u8..4) {
        let pem_wrapped = pem("PUBLIC KEY", &data);
        match wrap {
            0 => fuzz_key_file(&data),
            1 => fuzz_key_file(pem_wrapped.as_bytes()),
            2 => fuzz_key_file(pem("PRIVATE KEY", &data).as_bytes()),
            _ => fuzz_key_file(format!("{{\"keys\":[{{\"kty\":\"RSA\",\"n\":\"{}\",\"e\":\"AQAB\"}}]}}", b64u(&data)).as_bytes()),
        }
    }

    #[test]
    fn mutated_public_keys_never_panic(
        which in 0usize..4,
        index in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let key = [&*RSA, &*P256, &*P384, &*ED25519][which];
        let body: String = key.public_pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der = STANDARD.decode(body).unwrap();
        let at = index.index(der.len());
        der[at] = byte;
        fuzz_key_file(pem("PUBLIC KEY", &der).as_bytes());
    }
}

#[test]
fn pem_blocks_keep_labels_rustls_pki_types_does_not_know() {
    use super::keys::parse_pem;
    let labels = |text: &str| -> Vec<(String, Vec<u8>)> {
        parse_pem(text)
            .unwrap()
            .into_iter()
            .map(|block| (block.label, block.der))
            .collect()
    };
    // pki-types skips these labels; they must still come out, decoded, in order, with
    // the text around them ignored.
    let text = "comment\n-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n\
        Bag Attributes: x\n-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n\
        -----BEGIN PUBLIC KEY-----\nAQID\n-----END PUBLIC KEY-----\ntrailer\n";
    assert_eq!(
        labels(text),
        [
            (
                "EC PARAMETERS".to_owned(),
                b"\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07".to_vec()
            ),
            ("OPENSSH PRIVATE KEY".to_owned(), vec![0, 0, 0]),
            ("PUBLIC KEY".to_owned(), vec![1, 2, 3]),
        ]
    );
    // Indented blocks read as before.
    assert_eq!(
        labels("  -----BEGIN PUBLIC KEY-----\n\tAQID\n  -----END PUBLIC KEY-----\n"),
        [("PUBLIC KEY".to_owned(), vec![1, 2, 3])]
    );
    let refused = [
        // An unknown label is still checked: base64, END line, and its END is its own.
        (
            "-----BEGIN EC PARAMETERS-----\n@@@@\n-----END EC PARAMETERS-----\n",
            "EC PARAMETERS is not valid base64",
        ),
        (
            "-----BEGIN RSA PUBLIC KEY-----\nAQID\n",
            "RSA PUBLIC KEY has no END line",
        ),
        (
            "-----BEGIN RSA PUBLIC KEY-----\nAQID\n-----END PUBLIC KEY-----\n",
            "BEGIN RSA PUBLIC KEY ends with END PUBLIC KEY",
        ),
        (
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAQID\n-----END PRIVATE KEY-----\n",
            "BEGIN ENCRYPTED PRIVATE KEY ends with END PRIVATE KEY",
        ),
        (
            "-----BEGIN PUBLIC KEY-----\nAQID\n-----END PUBLIC KEY-----x\n",
            "PUBLIC KEY has no END line",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAQID\n-----END PRIVATE KEY-----\n",
            "PRIVATE KEY is encrypted or has headers",
        ),
    ];
    for (text, expected) in refused {
        let message = parse_pem(text).err().unwrap_or_default();
        assert!(
            message.contains(expected),
            "{text:?}: {message:?} should say {expected:?}"
        );
    }
}

#[test]
fn key_files_with_labels_rustls_pki_types_skips_get_their_own_message() {
    let dir = TempDir::new();
    let body = "AQID";
    for (label, expected) in [
        ("ENCRYPTED PRIVATE KEY", "is a private key (ENCRYPTED PRIVATE KEY)"),
        ("OPENSSH PRIVATE KEY", "is a private key (OPENSSH PRIVATE KEY)"),
        ("X509 CRL", "unsupported PEM block \"X509 CRL\""),
        ("SOMETHING ELSE", "unsupported PEM block \"SOMETHING ELSE\""),
    ] {
        let path = dir.file(
            "key.pem",
            format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"),
        );
        let err = Authenticator::new(&AuthConfig {
            public_key_files: vec![path],
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains(expected), "{label}: {err}");
    }
}
