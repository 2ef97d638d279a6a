//! `wsgate serve` from a loaded configuration to the exit code: raise limits, start the
//! shards and the admin listener, and turn signals into a graceful drain.
//!
//! Exit codes: 0 after a drain, 2 for an invalid configuration, 1 when the server cannot
//! start or a second signal cuts the drain short. The binary's `main` calls [`run`]; the
//! crash tests run it in a child process too, so they kill the same code operators run.
//! The caller installs the `tracing` subscriber first (see [`crate::logging`]).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use tracing::{error, info, warn};

use crate::admin::{self, AdminState, ApiState};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::Registry;
use crate::msg::api::ApiSinkSlot;
use crate::proto::close::CloseCode;
use crate::server::Server;
use crate::sys;
use crate::tls::TlsContext;
use crate::units::format_duration;

/// Serves until a signal's drain finishes: SIGTERM or SIGINT close clients with 1001,
/// SIGUSR1 with 1012 (service restart), a second signal exits at once, SIGHUP reloads TLS.
pub fn run(cfg: Config) -> ExitCode {
    let (nofile, _) = match sys::raise_nofile_limit() {
        Ok(limits) => limits,
        Err(e) => {
            error!(error = %e, "cannot read the open-files limit");
            return ExitCode::FAILURE;
        }
    };
    sys::disable_transparent_huge_pages();
    let authenticator = match Authenticator::new(&cfg.auth) {
        Ok(authenticator) => Arc::new(authenticator),
        Err(e) => {
            error!(error = %e, "invalid authentication configuration");
            return ExitCode::from(2);
        }
    };
    let report = sys::startup_report(&cfg, nofile);
    sys::log_startup(&cfg, nofile, &report, &authenticator);
    // Loaded before anything listens: a bad certificate or key is a configuration error.
    let tls = match cfg.tls_files() {
        Some(files) => match TlsContext::load(files) {
            Ok(context) => Some(Arc::new(context)),
            Err(e) => {
                error!(error = %e, "invalid tls configuration");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    // Read before anything listens, like the TLS files; the key itself is never printed.
    let api_key = match cfg.load_api_key() {
        Ok(key) => key,
        Err(e) => {
            error!(error = %e, "invalid backend api key");
            return ExitCode::from(2);
        }
    };
    let cfg = Arc::new(cfg);
    let registry = Arc::new(Registry::new(cfg.shards));
    // Installed before the shards start so a signal during start-up is not lost.
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGHUP]) {
        Ok(signals) => signals,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let admin_listener = match std::net::TcpListener::bind(cfg.admin_listen) {
        Ok(listener) => listener,
        Err(e) => {
            error!(admin = %cfg.admin_listen, error = %e, "cannot listen for admin");
            return ExitCode::FAILURE;
        }
    };
    // Port 0 binds some free port: the event says which.
    let admin_addr = admin_listener.local_addr().unwrap_or(cfg.admin_listen);
    // The backend API reaches the shards once they run; until then it answers 503.
    let api_shards = Arc::new(ApiSinkSlot::new());
    let mut admin_state = AdminState::new(registry.clone(), nofile);
    if let Some(key) = api_key {
        admin_state = admin_state.with_api(ApiState::new(key, api_shards.clone(), &cfg.msg));
    }
    let admin_state = Arc::new(admin_state);
    if let Err(e) = admin::spawn(admin_listener, admin_state.clone()) {
        error!(error = %e, "cannot start the admin listener");
        return ExitCode::FAILURE;
    }
    admin_state.tls.store(tls.is_some(), Ordering::Release);
    admin_state
        .cluster
        .store(cfg.redis.is_some() && !cfg.echo, Ordering::Release);
    let server = match Server::start_with_tls(cfg.clone(), registry.clone(), authenticator, tls.clone()) {
        Ok(server) => server,
        Err(e) => {
            error!(listen = %cfg.listen, error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    api_shards.set(Arc::new(server.api_shards()));
    admin_state.ready.store(true, Ordering::Release);
    let path = cfg.paths.first().map_or("/", String::as_str);
    info!(
        ws = %format_args!("ws://{}{path}", server.local_addr()),
        wss = server.tls_addr().map(|addr| format!("wss://{addr}{path}")),
        admin = %format_args!("http://{admin_addr}"),
        shards = cfg.shards,
        echo = cfg.echo,
        "listening"
    );
    if !cfg.echo {
        crate::server::journal::log_recovery(&cfg, server.recovery());
    }
    if admin_state.api.is_some() {
        // Where the API is and how it is called; the key itself is never logged.
        info!(
            url = %format_args!("http://{admin_addr}/api/"),
            auth = "Authorization: Bearer <api_key>",
            "backend api on"
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
    info!(
        close_code = %code,
        window = %format_duration(cfg.drain_window),
        deadline = %format_duration(cfg.drain_timeout),
        "draining; a second signal exits at once"
    );
    server.drain(code);
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == SIGHUP {
                reload_tls(tls.as_deref(), &registry);
                continue;
            }
            warn!(signal, "second signal: exiting without finishing the drain");
            std::process::exit(1);
        }
    });
    server.join();
    info!("drained");
    ExitCode::SUCCESS
}

/// SIGHUP: re-reads the certificate and key. New TLS connections get the new pair; open
/// ones keep theirs. A pair that does not load leaves the old one in force; either way
/// the outcome is logged (file names and the reason, never key material) and counted in
/// `wsgate_tls_reloads_total`.
fn reload_tls(tls: Option<&TlsContext>, registry: &Registry) {
    let Some(tls) = tls else {
        info!("sighup: tls is not configured, nothing to reload");
        return;
    };
    let files = tls.files();
    match tls.reload() {
        Ok(()) => {
            registry.count_tls_reload(true);
            info!(
                cert_file = %files.cert.display(),
                key_file = %files.key.display(),
                generation = tls.generation(),
                "tls reloaded; new connections use it"
            );
        }
        Err(e) => {
            registry.count_tls_reload(false);
            warn!(error = %e, "tls reload failed; the certificate in force stays");
        }
    }
}
