//! Test helpers: certificates generated at test time (no key is committed), files to
//! load them from, and rustls clients that trust them.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;

use super::TlsFiles;

/// A self-signed certificate for `localhost` and its key, as PEM and DER.
pub(crate) struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    pub fn new() -> Self {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("rcgen makes a certificate");
        Self {
            cert_pem: made.cert.pem(),
            key_pem: made.signing_key.serialize_pem(),
            der: made.cert.der().clone(),
        }
    }
}

/// A directory holding `cert.pem` and `key.pem`, removed on drop.
pub(crate) struct CertDir {
    pub dir: PathBuf,
}

impl CertDir {
    pub fn new(cert: &TestCert) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsgate-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let this = Self { dir };
        this.write(cert);
        this
    }

    /// Replaces the files (what an operator does before SIGHUP).
    pub fn write(&self, cert: &TestCert) {
        std::fs::write(self.cert_path(), &cert.cert_pem).unwrap();
        std::fs::write(self.key_path(), &cert.key_pem).unwrap();
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.cert_path(),
            key: self.key_path(),
            tickets: true,
        }
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client trusting `roots` only, offering ALPN http/1.1, with the given versions.
pub(crate) fn client_config(
    roots: &[&CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Both versions, TLS 1.3 preferred.
pub(crate) const BOTH: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
