//! In-process TLS (`wss://`) with rustls.
//!
//! - [`TlsContext`]: the server configuration shared by every shard: the certificate
//!   chain and key read from PEM files, TLS 1.3 and 1.2 with rustls' default (modern)
//!   suites, ALPN `http/1.1`, session resumption (stateless tickets from one
//!   [`rustls::crypto::aws_lc_rs::Ticketer`] plus a bounded server session cache).
//!   [`TlsContext::reload`] re-reads the files (on SIGHUP) and publishes a new
//!   configuration; a file that does not load leaves the old one in force. Shards read
//!   the configuration only when they accept a TLS connection, after one relaxed load
//!   of the generation counter ([`TlsContext::generation`]).
//! - [`TlsSession`]: one connection, sans-IO (ciphertext in, plaintext and ciphertext
//!   out), driven by the shard with buffers the shard owns.
//!
//! Data path: the shard reads ciphertext into its one read buffer, the session decrypts
//! it, the plaintext (in a second shard buffer) goes to the same upgrade parser and
//! WebSocket state machine as plain connections; outgoing frames are encrypted when the
//! socket is about to take them, into a per-connection buffer that is freed when empty.
//! Session tickets and the session cache survive reloads: clients resume across a
//! certificate change.
#![forbid(unsafe_code)]

mod session;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use self::session::{HandshakeInfo, Input, SessionError, TlsSession};

/// The read buffer a TLS shard needs at least: one whole TLS record (16 KiB of
/// plaintext plus rustls' allowance for expansion, 18,437 bytes on the wire) must fit
/// in it behind nothing, because an unfinished record is moved to the buffer's front
/// before the next read. `Config::validate` refuses a smaller `read_buffer_bytes` when
/// TLS is on. A handshake message being joined from several records stays in the buffer
/// too; if unfinished input ever fills the whole buffer (no real client sends a
/// handshake message that large), the connection fails as `too_large`.
pub const MIN_READ_BUFFER_BYTES: usize = 32 * 1024;

/// TLS 1.2 sessions (and TLS 1.3 sessions when tickets are off) the server remembers
/// for resumption, per process. An entry is a few hundred bytes, so the cache costs at
/// most a few MiB; when full, the oldest entry goes and that client does a full
/// handshake.
pub const SESSION_CACHE_ENTRIES: usize = 16_384;

/// TLS 1.3 tickets sent after each full handshake. One: a WebSocket client opens one
/// connection at a time and gets a fresh ticket on every resumption (rustls' default of
/// two costs a second ticket's encryption and bytes per handshake for nothing).
pub const TLS13_TICKETS_PER_HANDSHAKE: usize = 1;

/// User-space memory of one idle TLS connection beyond a plain one, for the start-up
/// memory report: rustls' connection state (about 2.3 KB of Rust heap, asserted under
/// 4 KiB in the tests) plus aws-lc's two AEAD key contexts (about 1.2 KB of C heap);
/// measured as 3.9-4.0 KiB of RSS per connection at 10,000 and 19,000 connections.
pub const SESSION_BYTES_ESTIMATE: u64 = 4096;

/// The ALPN protocol offered: WebSocket over TLS is HTTP/1.1 (RFC 6455). A client that
/// offers ALPN without it is refused with `no_application_protocol`.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Where the certificate and key come from and how resumption works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Stateless session tickets (TLS 1.3 and 1.2). Off: resumption through the server
    /// session cache only.
    pub tickets: bool,
}

/// Why a certificate or key did not load. Never carries key material.
#[derive(Debug)]
pub enum TlsError {
    /// A file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The certificate file holds no `CERTIFICATE` section, or a bad one.
    Certificates {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: String,
    },
    /// The key file holds no private key section, or a bad one.
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: String,
    },
    /// rustls refused the pair (unsupported key type, key does not match the
    /// certificate).
    Rejected(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            Self::Certificates { path, error } => {
                write!(f, "{}: no usable certificate chain: {error}", path.display())
            }
            Self::Key { path, error } => write!(f, "{}: no usable private key: {error}", path.display()),
            Self::Rejected(e) => write!(f, "certificate and key refused: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_owned(),
        error,
    })
}

/// Reads a PEM certificate chain (leaf first).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificates {
            path: path.to_owned(),
            error: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certificates {
            path: path.to_owned(),
            error: "no CERTIFICATE section".to_owned(),
        });
    }
    Ok(chain)
}

/// Reads a PEM private key (the first key section of the file).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    // The pki-types PEM errors name the section syntax, never the key bytes.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Key {
        path: path.to_owned(),
        error: match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY section".to_owned(),
            other => other.to_string(),
        },
    })
}

/// Resumption state that outlives certificate reloads.
struct Resumption {
    ticketer: Option<Arc<dyn ProducesTickets>>,
    cache: Arc<dyn StoresServerSessions>,
}

fn build_config(files: &TlsFiles, resumption: &Resumption) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certificates(&files.cert)?;
    let key = load_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Rejected)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Rejected)?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.session_storage = resumption.cache.clone();
    config.send_tls13_tickets = TLS13_TICKETS_PER_HANDSHAKE;
    if let Some(ticketer) = &resumption.ticketer {
        config.ticketer = ticketer.clone();
    }
    Ok(Arc::new(config))
}

/// The TLS configuration every shard uses, reloadable.
pub struct TlsContext {
    files: TlsFiles,
    resumption: Resumption,
    current: RwLock<Arc<ServerConfig>>,
    /// Bumped on every successful reload; shards compare it with the generation of the
    /// configuration they cached.
    generation: AtomicU64,
}

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsContext")
            .field("files", &self.files)
            .field("generation", &self.generation())
            .finish()
    }
}

impl TlsContext {
    /// Loads the certificate and key; fails if either is unusable.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let ticketer = if files.tickets {
            Some(rustls::crypto::aws_lc_rs::Ticketer::new().map_err(TlsError::Rejected)?)
        } else {
            None
        };
        let resumption = Resumption {
            ticketer,
            cache: ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES),
        };
        let config = build_config(&files, &resumption)?;
        Ok(Self {
            files,
            resumption,
            current: RwLock::new(config),
            generation: AtomicU64::new(1),
        })
    }

    /// Re-reads the files and, if they load, makes them the configuration for new
    /// connections (connections already open keep theirs). On failure the old one stays
    /// and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build_config(&self.files, &self.resumption)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Changes with every successful reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The configuration in force and its generation.
    pub fn current(&self) -> (u64, Arc<ServerConfig>) {
        let config = self.current.read().unwrap_or_else(|e| e.into_inner());
        (self.generation(), config.clone())
    }

    /// The files this context reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
