//! The `wsgate` binary: parse the configuration, raise limits, start the shards and the
//! admin listener, and turn signals into a graceful drain.
//!
//! Exit codes: 0 after a drain (or for `--help`), 2 for an invalid configuration or
//! usage, 1 when the server cannot start or a second signal cuts the drain short.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use wsgate::admin::{self, AdminState, ApiState};
use wsgate::auth::{AuthMode, Authenticator};
use wsgate::cli::{self, Command};
use wsgate::config::Config;
use wsgate::metrics::Registry;
use wsgate::msg::api::ApiSinkSlot;
use wsgate::proto::close::CloseCode;
use wsgate::server::Server;
use wsgate::sys;
use wsgate::tls::TlsContext;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match cli::load() {
        Ok(Command::Serve(cfg)) => serve(cfg),
        Ok(Command::Token(args)) => wsgate::auth::run_token(&args),
        Ok(Command::Bench(args)) => wsgate::bench::run(args),
        Err(e) => e.exit(),
    }
}

fn serve(cfg: Config) -> ExitCode {
    let (nofile, _) = match sys::raise_nofile_limit() {
        Ok(limits) => limits,
        Err(e) => {
            eprintln!("wsgate: cannot read the open-files limit: {e}");
            return ExitCode::FAILURE;
        }
    };
    sys::disable_transparent_huge_pages();
    let authenticator = match Authenticator::new(&cfg.auth) {
        Ok(authenticator) => Arc::new(authenticator),
        Err(e) => {
            eprintln!("wsgate: {e}");
            return ExitCode::from(2);
        }
    };
    let report = sys::startup_report(&cfg, nofile);
    for line in &report.lines {
        eprintln!("wsgate: {line}");
    }
    match authenticator.mode() {
        AuthMode::Jwt => eprintln!(
            "wsgate: auth: JWT before the upgrade, {} key(s), algorithms {:?}",
            authenticator.key_count(),
            authenticator.allowed_algorithms()
        ),
        AuthMode::None => eprintln!(
            "wsgate: WARNING: --auth-mode none: EVERY client is let in without a token, as an anonymous user. \
             For local benchmarks only; never expose this listener."
        ),
    }
    for warning in &report.warnings {
        eprintln!("wsgate: WARNING: {warning}");
    }
    // Loaded before anything listens: a bad certificate or key is a configuration error.
    let tls = match cfg.tls_files() {
        Some(files) => match TlsContext::load(files) {
            Ok(context) => Some(Arc::new(context)),
            Err(e) => {
                eprintln!("wsgate: TLS: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    // Read before anything listens, like the TLS files; the key itself is never printed.
    let api_key = match cfg.load_api_key() {
        Ok(key) => key,
        Err(e) => {
            eprintln!("wsgate: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = Arc::new(cfg);
    let registry = Arc::new(Registry::new(cfg.shards));
    // Installed before the shards start so a signal during start-up is not lost.
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGHUP]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("wsgate: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admin_listener = match std::net::TcpListener::bind(cfg.admin_listen) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("wsgate: cannot listen for admin on {}: {e}", cfg.admin_listen);
            return ExitCode::FAILURE;
        }
    };
    // The backend API reaches the shards once they run; until then it answers 503.
    let api_shards = Arc::new(ApiSinkSlot::new());
    let mut admin_state = AdminState::new(registry.clone(), nofile);
    if let Some(key) = api_key {
        admin_state = admin_state.with_api(ApiState::new(key, api_shards.clone(), &cfg.msg));
    }
    let admin_state = Arc::new(admin_state);
    if let Err(e) = admin::spawn(admin_listener, admin_state.clone()) {
        eprintln!("wsgate: cannot start the admin listener: {e}");
        return ExitCode::FAILURE;
    }
    admin_state.tls.store(tls.is_some(), Ordering::Release);
    let server = match Server::start_with_tls(cfg.clone(), registry.clone(), authenticator, tls.clone()) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("wsgate: cannot start on {}: {e}", cfg.listen);
            return ExitCode::FAILURE;
        }
    };
    api_shards.set(Arc::new(server.api_shards()));
    admin_state.ready.store(true, Ordering::Release);
    eprintln!(
        "wsgate: listening on ws://{}{} with {} shards{}; admin on http://{}",
        server.local_addr(),
        cfg.paths.first().map_or("/", String::as_str),
        cfg.shards,
        if cfg.echo { ", echoing every message" } else { "" },
        cfg.admin_listen,
    );
    if !cfg.echo {
        eprintln!("wsgate: {}", wsgate::server::journal::describe(&cfg, server.recovery()));
    }
    if admin_state.api.is_some() {
        eprintln!(
            "wsgate: backend API on http://{}/api/ (Authorization: Bearer <api_key>)",
            cfg.admin_listen
        );
    }
    if let Some(addr) = server.tls_addr() {
        eprintln!(
            "wsgate: listening on wss://{addr}{} (TLS 1.3/1.2, ALPN http/1.1); SIGHUP reloads the certificate",
            cfg.paths.first().map_or("/", String::as_str)
        );
    }
    let first = loop {
        match signals.forever().next() {
            Some(SIGHUP) => reload_tls(tls.as_deref(), &registry),
            other => break other,
        }
    };
    let code = if first == Some(SIGUSR1) {
        CloseCode::SERVICE_RESTART
    } else {
        CloseCode::GOING_AWAY
    };
    admin_state.draining.store(true, Ordering::Release);
    eprintln!(
        "wsgate: draining: close {code} spread over {:?}, deadline {:?}; a second signal exits at once",
        cfg.drain_window, cfg.drain_timeout
    );
    server.drain(code);
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == SIGHUP {
                reload_tls(tls.as_deref(), &registry);
                continue;
            }
            eprintln!("wsgate: second signal: exiting without finishing the drain");
            std::process::exit(1);
        }
    });
    server.join();
    eprintln!("wsgate: drained");
    ExitCode::SUCCESS
}

/// SIGHUP: re-reads the certificate and key. New TLS connections get the new pair; open
/// ones keep theirs. A pair that does not load leaves the old one in force; either way
/// the outcome is logged (file names and the reason, never key material) and counted in
/// `wsgate_tls_reloads_total`.
fn reload_tls(tls: Option<&TlsContext>, registry: &Registry) {
    let Some(tls) = tls else {
        eprintln!("wsgate: SIGHUP: TLS is not configured, nothing to reload");
        return;
    };
    let files = tls.files();
    match tls.reload() {
        Ok(()) => {
            registry.count_tls_reload(true);
            eprintln!(
                "wsgate: TLS: reloaded {} and {} (generation {}); new connections use them",
                files.cert.display(),
                files.key.display(),
                tls.generation()
            );
        }
        Err(e) => {
            registry.count_tls_reload(false);
            eprintln!("wsgate: TLS: reload failed, the certificate in force stays: {e}");
        }
    }
}
