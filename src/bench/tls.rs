//! The bench's TLS client configuration for `wss://` URLs.
//!
//! The workers drive one rustls `ClientConnection` per connection (the buffered API is
//! fine on this side: the bench's memory per connection is reported apart from the
//! server's). Trust comes from `--ca FILE` (PEM roots) or, for a throw-away test
//! certificate, `--tls-insecure`, which accepts any certificate but still checks the
//! handshake signatures, so the server does all the work a real handshake costs it.
//! Resumption is off unless `--tls-resume`: each connection is then a full handshake,
//! the worst case a reconnect storm brings.
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// How the bench trusts the gateway's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Roots from a PEM file.
    Roots(std::path::PathBuf),
    /// Any certificate (signatures over the handshake are still verified).
    Insecure,
}

/// A client configuration for the bench: ALPN `http/1.1`, TLS 1.3 and 1.2, session
/// resumption only when `resume`.
pub fn client_config(trust: &Trust, resume: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let mut config = match trust {
        Trust::Roots(path) => builder.with_root_certificates(roots(path)?).with_no_client_auth(),
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// The TLS server name for `host` (a DNS name or an IP literal without brackets).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: not a TLS server name: {e}"))
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let chain = crate::tls::load_certificates(path).map_err(|e| e.to_string())?;
    let mut store = rustls::RootCertStore::empty();
    for cert in chain {
        store
            .add(cert)
            .map_err(|e| format!("{}: not a usable root: {e}", path.display()))?;
    }
    Ok(store)
}

/// `--tls-insecure`: any certificate is accepted; handshake signatures are checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
