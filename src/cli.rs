//! The command line: `wsgate [serve] [OPTIONS]`, `wsgate token ...`, `wsgate bench ...`.
//!
//! `main` calls [`load`] once. The arguments go in; a [`Command`] comes out, carrying a
//! checked [`Config`] for `serve` (made by [`config::load_serve`] from the serve flags,
//! the environment and the config file) or the parsed arguments of `token` or `bench`;
//! or a [`ConfigError`] that says what is wrong (or holds the `--help` text).
//!
//! This module only assembles the commands: the serve options are
//! [`config::ServeFlags`] (built from the option table in `config`), the bench's are
//! [`crate::bench::BenchArgs`], the token's [`crate::auth::TokenArgs`]. Nothing imports
//! this module but `main` (and tests), so it can import all three.
#![forbid(unsafe_code)]

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{self, Config, ConfigError, ServeFlags};

/// What the command line asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
// Parsed once at start-up and dropped: the size difference between variants costs
// nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the gateway (`wsgate serve`, also what `wsgate` with no command does).
    Serve(Config),
    /// Mint a token for testing (`wsgate token --user alice ...`).
    Token(crate::auth::TokenArgs),
    /// Run the load generator (`wsgate bench density|echo|fanout|direct ...`). Its
    /// options are flags only: a benchmark run is spelled out on its command line, not
    /// inherited from the environment or the gateway's config file.
    Bench(crate::bench::BenchArgs),
}

/// Parses the process's arguments and environment (and the config file they name).
pub fn load() -> Result<Command, ConfigError> {
    // A variable that is not UTF-8 is passed on mangled, so it fails to parse visibly
    // instead of being ignored.
    load_from(std::env::args_os(), &|name| {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    })
}

/// [`load`] with the arguments (program name first) and the environment given, for
/// tests and embedding.
pub fn load_from<I, T>(args: I, env: &dyn Fn(&str) -> Option<String>) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command().try_get_matches_from(args).map_err(ConfigError::Cli)?;
    let cli = Cli::from_arg_matches(&matches).map_err(ConfigError::Cli)?;
    match cli.command {
        Some(Sub::Serve(flags)) => config::load_serve(flags, env).map(Command::Serve),
        Some(Sub::Token(args)) => Ok(Command::Token(args)),
        Some(Sub::Bench(args)) => Ok(Command::Bench(args)),
        None => config::load_serve(cli.serve, env).map(Command::Serve),
    }
}

/// The whole clap command, as [`load_from`] parses with it.
pub fn command() -> clap::Command {
    Cli::command()
}

const AFTER_HELP: &str = "\
Every option can also be set by the environment variable shown with it or by a key of the \
same name (with underscores) in the --config file. A flag beats the variable, the variable \
beats the file, the file beats the default.

Durations need a unit: 200us, 250ms, 10s, 2m, 1h. Sizes are bytes, or take a KiB, MiB, GiB or TiB \
suffix (64KiB). Lists are comma-separated or repeated (--paths /ws,/chat).";

/// `wsgate [serve] [OPTIONS]`: the serve options are accepted at the top level too, so
/// `serve` is the default command; `args_conflicts_with_subcommands` keeps the two
/// spellings from mixing (`wsgate --echo serve` is an error).
#[derive(Parser, Debug)]
#[command(
    name = "wsgate",
    version,
    about = "A thread-per-core WebSocket gateway",
    override_usage = "wsgate [serve] [OPTIONS]\n       wsgate bench <density|echo|fanout|direct> [OPTIONS]\n       wsgate token --user <ID> [OPTIONS]",
    args_conflicts_with_subcommands = true,
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[command(flatten)]
    serve: ServeFlags,
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Sub {
    /// Run the gateway (the default command).
    #[command(after_help = AFTER_HELP)]
    Serve(ServeFlags),
    /// Mint a signed token for testing (like other gateways' gentoken).
    Token(crate::auth::TokenArgs),
    /// Load generator: prove density (idle connections held) and speed (echo round
    /// trips, room fan-out, direct messages) against a running gateway.
    Bench(crate::bench::BenchArgs),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::BenchCommand;

    #[test]
    fn the_usage_names_every_bench_subcommand() {
        let mut cli = command();
        let usage = cli.render_usage().to_string();
        let bench = cli.find_subcommand("bench").expect("bench");
        let names: Vec<&str> = bench.get_subcommands().map(|c| c.get_name()).collect();
        assert_eq!(names, ["density", "echo", "fanout", "direct"]);
        let spelled = format!("bench <{}>", names.join("|"));
        assert!(usage.contains(&spelled), "usage lacks {spelled}: {usage}");
        let about = bench.get_about().map(|a| a.to_string()).unwrap_or_default();
        for measures in ["density", "echo", "fan-out", "direct"] {
            assert!(about.contains(measures), "bench about lacks {measures}: {about}");
        }
    }

    // Moved from the bench's tests: it drives the whole command line.
    #[test]
    fn the_command_line_reaches_the_bench() {
        let no_env = |_: &str| None;
        let command = load_from(
            [
                "wsgate",
                "bench",
                "density",
                "--url",
                "ws://127.0.0.1:18080/ws",
                "--connections",
                "10000",
                "--rate",
                "5000/s",
                "--hold",
                "10s",
                "--source-ips",
                "127.0.0.2-127.0.0.40",
                "--token",
                "T",
                "--admin",
                "http://127.0.0.1:9090",
                "--json",
            ],
            &no_env,
        )
        .unwrap();
        let Command::Bench(args) = command else {
            panic!("{command:?}")
        };
        let BenchCommand::Density(d) = args.command else {
            panic!()
        };
        assert_eq!(d.connections, 10_000);
        assert_eq!(d.hold, Duration::from_secs(10));
        assert_eq!(d.admin.as_deref(), Some("127.0.0.1:9090"));
        assert_eq!(d.common.rate.per_second(), 5000.0);
        assert_eq!(d.common.source_ips.unwrap().len(), 39);
        assert_eq!(d.common.token.as_deref(), Some("T"));
        assert!(d.common.json);
        let command = load_from(
            [
                "wsgate",
                "bench",
                "echo",
                "--connections",
                "100",
                "--size",
                "4KiB",
                "--in-flight",
                "8",
                "--duration",
                "10s",
                "--binary",
            ],
            &no_env,
        )
        .unwrap();
        let Command::Bench(args) = command else {
            panic!("{command:?}")
        };
        let BenchCommand::Echo(e) = args.command else { panic!() };
        assert_eq!((e.connections, e.size, e.in_flight), (100, 4096, 8));
        assert!(e.binary);
        assert_eq!(e.warmup, Duration::from_secs(1));
        let command = load_from(
            [
                "wsgate",
                "bench",
                "fanout",
                "--url",
                "ws://127.0.0.1:18080/ws",
                "--subscribers",
                "18000",
                "--room",
                "lobby",
                "--publish-rate",
                "100/s",
                "--duration",
                "30s",
                "--size",
                "1KiB",
                "--publishers",
                "4",
                "--json",
            ],
            &no_env,
        )
        .unwrap();
        let Command::Bench(args) = command else {
            panic!("{command:?}")
        };
        let BenchCommand::Fanout(f) = args.command else {
            panic!()
        };
        assert_eq!((f.subscribers, f.publishers, f.size), (18_000, 4, 1024));
        assert_eq!(f.room, "lobby");
        assert_eq!(f.publish_rate.per_second(), 100.0);
        assert_eq!(f.duration, Duration::from_secs(30));
        assert_eq!(f.user_prefix, "bench-");
        assert!(f.common.json);
        let command = load_from(
            [
                "wsgate",
                "bench",
                "direct",
                "--pairs",
                "500",
                "--send-rate",
                "10000/s",
                "--duration",
                "20s",
            ],
            &no_env,
        )
        .unwrap();
        let Command::Bench(args) = command else {
            panic!("{command:?}")
        };
        let BenchCommand::Direct(d) = args.command else {
            panic!()
        };
        assert_eq!(d.pairs, 500);
        assert_eq!(d.send_rate.per_second(), 10_000.0);
        assert_eq!(d.duration, Duration::from_secs(20));
        // Bad values are usage errors (exit 2), and serve stays the default command.
        for bad in [
            &["wsgate", "bench", "density", "--rate", "0/s"][..],
            &["wsgate", "bench", "density", "--hold", "10"],
            &["wsgate", "bench", "density", "--url", "http://x/ws"],
            &["wsgate", "bench", "echo", "--in-flight", "0"],
            &["wsgate", "bench", "echo", "--size", "0"],
            &["wsgate", "bench", "fanout", "--publishers", "1001"],
            &["wsgate", "bench", "fanout", "--user-prefix", "a b"],
            &["wsgate", "bench", "fanout", "--size", "2MiB"],
            &["wsgate", "bench"],
        ] {
            let err = load_from(bad.iter().copied(), &no_env).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
        assert!(matches!(load_from(["wsgate"], &no_env), Ok(Command::Serve(_))));
    }
}
