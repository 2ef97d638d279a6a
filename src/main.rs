//! The `wsgate` binary: parse the command line, install the log subscriber, and run the
//! command (`serve` is [`wsgate::serve::run`]).
//!
//! Exit codes: 0 after a drain (or for `--help`), 2 for an invalid configuration or
//! usage, 1 when the server cannot start or a second signal cuts the drain short.
//!
//! Diagnostics are `tracing` events on stderr (see `wsgate::logging`); the subscriber is
//! installed here, once, before anything logs: with `--log-level` and `--log-format`
//! for `serve`, with the defaults (info, text) for `token`, `bench` and a configuration
//! that did not load.

use std::process::ExitCode;

use wsgate::cli::{self, Command};
use wsgate::logging::{self, LogFilter, LogFormat};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let command = cli::load();
    match &command {
        Ok(Command::Serve(cfg)) => logging::install(&cfg.log_level, cfg.log_format),
        _ => logging::install(&LogFilter::default(), LogFormat::default()),
    };
    match command {
        Ok(Command::Serve(cfg)) => wsgate::serve::run(cfg),
        Ok(Command::Token(args)) => wsgate::auth::run_token(&args),
        Ok(Command::Bench(args)) => wsgate::bench::run(args),
        Err(e) => e.exit(),
    }
}
