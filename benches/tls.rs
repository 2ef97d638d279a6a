//! TLS handshakes per second per core, server side: full handshakes (TLS 1.3 and 1.2,
//! ECDSA P-256 certificate, X25519) and resumed ones (TLS 1.3 ticket, TLS 1.2 ticket).
//!
//! A rustls client and a `wsgate::tls::TlsSession` exchange flights in memory; only the
//! server's calls (session creation and `handle_ciphertext`, which encodes its flights)
//! are timed, by the thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`), so the figure is
//! the CPU one handshake costs the gateway even on a machine busy with other work. One
//! over it is the handshakes per second one core can complete, before the TCP accept
//! path and the upgrade (about 1.5 µs, `benches/handshake.rs`) are added.
//!
//! The client is rustls with aws-lc-rs defaults, so TLS 1.3 key exchange is the hybrid
//! X25519MLKEM768 (as current browsers offer), and a TLS 1.3 resumption still does that
//! key exchange (rustls resumes with psk_dhe_ke only); a TLS 1.2 resumption does none.
//!
//! Run: `cargo bench --bench tls -- --warm-up-time 1 --measurement-time 5`
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rustls::{ClientConfig, ClientConnection};
use wsgate::tls::{TlsContext, TlsFiles, TlsSession};

struct Setup {
    server: Arc<rustls::ServerConfig>,
    root: rustls_pki_types::CertificateDer<'static>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup() -> Setup {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("wsgate-tls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).unwrap();
    let context = TlsContext::load(TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        tickets: true,
    })
    .unwrap();
    Setup {
        server: context.current().1,
        root: made.cert.der().clone(),
        _dir: TempDir(dir),
    }
}

fn client(
    root: &rustls_pki_types::CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// CPU time of the calling thread.
fn cpu_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a live local the call writes into; the clock id is valid on Linux.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One handshake; returns the CPU time the server side took and whether it resumed.
fn handshake(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<ClientConfig>,
    buf: &mut [u8],
    plain: &mut Vec<u8>,
) -> (Duration, bool) {
    let mut spent = Duration::ZERO;
    let started = cpu_now();
    let mut session = TlsSession::new(server.clone()).unwrap();
    spent += cpu_now() - started;
    let mut conn = ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
    for _ in 0..10 {
        let mut wire = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut wire).unwrap();
        }
        let kept = session.partial_len();
        let len = wire.len();
        session.take_partial(buf);
        buf[kept..kept + len].copy_from_slice(&wire);
        let started = cpu_now();
        session.handle_ciphertext(&mut buf[..kept + len], plain).unwrap();
        spent += cpu_now() - started;
        let out = session.poll_transmit().to_vec();
        session.consume_transmit(out.len());
        let mut slice = &out[..];
        while !slice.is_empty() {
            conn.read_tls(&mut slice).unwrap();
            conn.process_new_packets().unwrap();
        }
        if !conn.is_handshaking() && session.is_established() {
            let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            return (spent, resumed);
        }
    }
    panic!("handshake did not finish");
}

fn tls(c: &mut Criterion) {
    let setup = setup();
    let mut buf = vec![0u8; 64 * 1024];
    let mut plain = Vec::new();
    let mut group = c.benchmark_group("tls_server_handshake");
    for (name, version) in [("tls13", &rustls::version::TLS13), ("tls12", &rustls::version::TLS12)] {
        group.bench_function(format!("full_{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // A fresh client config each time: nothing to resume.
                    let client = client(&setup.root, version);
                    total += handshake(&setup.server, &client, &mut buf, &mut plain).0;
                }
                total
            })
        });
        let resuming = client(&setup.root, version);
        handshake(&setup.server, &resuming, &mut buf, &mut plain);
        assert!(
            handshake(&setup.server, &resuming, &mut buf, &mut plain).1,
            "{name} resumes"
        );
        group.bench_function(format!("resumed_{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += handshake(&setup.server, &resuming, &mut buf, &mut plain).0;
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, tls);
criterion_main!(benches);
