//! Diagnostics: one logging path for the whole process, through `tracing`.
//!
//! In: the `log_level` filter and `log_format` of the [`crate::config::Config`]
//! (`wsgate token` and `wsgate bench` use the defaults, `info` and `text`), once, in
//! `main`, which calls [`install`] before anything logs. Out: one line per event on stderr, plain text for a
//! person or one JSON object per line for a log shipper. What a user reads as *output*
//! (the token of `wsgate token`, the bench's table or JSON) is not an event: it stays on
//! stdout, plain.
//!
//! Events carry fields, not sentences: `shard`, `peer` and `user` when known, `reason`,
//! `error`, counts; the message is a few lower-case words. No event holds a token, key
//! or secret: configuration secrets are [`crate::auth::Secret`]s, whose `Debug` is
//! redacted, and the start-up events ([`crate::sys::log_startup`]) say whether a secret is set,
//! never what it is.
//!
//! # Blocking
//!
//! The subscriber formats each event into a buffer and writes it to stderr with one
//! `write` call under stderr's lock: what `eprintln!` did, and no more. A shard thread
//! blocks on logging only as long as stderr's reader is slow (a pipe whose reader
//! stalls), exactly as before. There is no background logging thread: events are rare
//! (start-up, shutdown, failures), and the per-event warnings a flood of bad clients
//! could cause go through a [`RateLimit`] each.
//!
//! # Rate limits
//!
//! A [`RateLimit`] is sans-IO: the caller passes `now` to [`RateLimit::handle_event`]
//! (log this one or not) and to [`RateLimit::poll_suppressed`] (how many were held back
//! in a window that has ended, for one summary line). Each shard keeps one per kind of
//! noisy event, at [`LOG_EVENTS_PER_SECOND`].
#![forbid(unsafe_code)]

use std::fmt;
use std::time::{Duration, Instant};

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{Layer, Registry};

/// Events of one kind one shard logs per second at most (accept failures, ring
/// failures). Beyond it they are counted, and one `suppressed events` line with the
/// count follows when the second is over: a flood of bad clients or a ring failing on
/// every turn writes at most this many lines a second per shard and kind, not one per
/// event (the metrics count every one).
pub const LOG_EVENTS_PER_SECOND: u32 = 10;

/// The window of [`LOG_EVENTS_PER_SECOND`].
pub const LOG_RATE_WINDOW: Duration = Duration::from_secs(1);

/// How events are written: `text` for a person (the default), `json` for log shippers
/// (one object per line: `timestamp`, `level`, `message`, the event's fields, `target`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `2025-01-01T00:00:00.000000Z  INFO wsgate: listening ws=ws://0.0.0.0:8080/ws`.
    #[default]
    Text,
    /// `{"timestamp":"…","level":"INFO","message":"listening","ws":"…","target":"wsgate"}`.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("text or json".to_owned()),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Which events are written: a level (`error`, `warn`, `info`, `debug`, `trace`, or
/// `off`), or comma-separated directives `target=level` with at most one bare level for
/// every other target (`wsgate::server=debug,info`). Without a bare level, targets not
/// named are off, as in `RUST_LOG`. Checked when parsed, so a typo is a configuration
/// error instead of a filter that silently shows nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFilter {
    /// The directives, normalised (`wsgate=debug,info`): what `Display` and the config
    /// file show.
    text: String,
    /// The level of every target no directive names.
    default: Option<LevelFilter>,
    /// `(target, level)` in the order given.
    directives: Vec<(String, LevelFilter)>,
}

impl LogFilter {
    /// Every event at `level` or more severe.
    pub fn level(level: LevelFilter) -> Self {
        Self {
            text: level.to_string(),
            default: Some(level),
            directives: Vec::new(),
        }
    }

    /// The filter as a `tracing_subscriber` layer.
    pub fn targets(&self) -> Targets {
        let targets = Targets::new().with_targets(self.directives.iter().map(|(t, l)| (t.clone(), *l)));
        match self.default {
            Some(level) => targets.with_default(level),
            None => targets,
        }
    }
}

impl Default for LogFilter {
    fn default() -> Self {
        Self::level(LevelFilter::INFO)
    }
}

fn parse_level(word: &str) -> Option<LevelFilter> {
    Some(match word.to_ascii_lowercase().as_str() {
        "off" => LevelFilter::OFF,
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "info" => LevelFilter::INFO,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => return None,
    })
}

impl std::str::FromStr for LogFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected = || {
            "a level (error, warn, info, debug, trace or off), or comma-separated target=level directives \
             with at most one bare level (wsgate=debug,info)"
                .to_owned()
        };
        let mut filter = Self {
            text: String::new(),
            default: None,
            directives: Vec::new(),
        };
        let mut parts = Vec::new();
        for part in s.split(',').map(str::trim) {
            match part.split_once('=') {
                None => {
                    let level = parse_level(part).ok_or_else(expected)?;
                    if filter.default.replace(level).is_some() {
                        return Err(expected());
                    }
                    parts.push(level.to_string());
                }
                Some((target, level)) => {
                    let target = target.trim();
                    let valid_target = !target.is_empty()
                        && target
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
                    let level = parse_level(level.trim())
                        .filter(|_| valid_target)
                        .ok_or_else(expected)?;
                    parts.push(format!("{target}={level}"));
                    filter.directives.push((target.to_owned(), level));
                }
            }
        }
        filter.text = parts.join(",");
        Ok(filter)
    }
}

impl fmt::Display for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The process's subscriber: `filter` over a formatter of `format` writing to `writer`
/// (stderr in [`install`]; a buffer in tests, with `tracing::subscriber::with_default`).
pub fn subscriber<W>(filter: &LogFilter, format: LogFormat, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    let layer: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => Box::new(layer),
        // Fields at the top level next to `message`, no span objects: what log shippers
        // index without a pipeline of their own.
        LogFormat::Json => Box::new(
            layer
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false),
        ),
    };
    tracing_subscriber::registry().with(layer).with(filter.targets())
}

/// Installs the process's subscriber, writing to stderr (see the module doc: one
/// `write` per event, no background thread). Called once by `main`, before anything
/// logs; a second call leaves the first subscriber in force and returns `false`.
pub fn install(filter: &LogFilter, format: LogFormat) -> bool {
    tracing::subscriber::set_global_default(subscriber(filter, format, std::io::stderr)).is_ok()
}

/// At most `max` events of one kind per `window` are logged; the rest are counted, and
/// [`RateLimit::poll_suppressed`] hands the count over once the window they fell in has
/// ended, for one summary line. Sans-IO: the caller passes the time in.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    /// Events let through per window.
    max: u32,
    /// The window's length.
    window: Duration,
    /// When the current window started (`None` before the first event).
    started: Option<Instant>,
    /// Events let through in the current window.
    passed: u32,
    /// Events held back since the last summary.
    suppressed: u64,
}

impl RateLimit {
    /// A limit of `max` events per `window`.
    pub const fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            started: None,
            passed: 0,
            suppressed: 0,
        }
    }

    /// The limit every shard uses: [`LOG_EVENTS_PER_SECOND`] per [`LOG_RATE_WINDOW`].
    pub const fn per_shard() -> Self {
        Self::new(LOG_EVENTS_PER_SECOND, LOG_RATE_WINDOW)
    }

    /// An event of this kind happened at `now`: whether to log it (`false`: it is
    /// counted for the summary instead).
    pub fn handle_event(&mut self, now: Instant) -> bool {
        if self.started.is_none_or(|started| now >= started + self.window) {
            self.started = Some(now);
            self.passed = 0;
        }
        if self.passed < self.max {
            self.passed += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// The events held back, once the window they were held back in has ended (then
    /// the count starts again from zero); `None` while that window lasts or when none
    /// were held back.
    pub fn poll_suppressed(&mut self, now: Instant) -> Option<u64> {
        let ended = self.started.is_some_and(|started| now >= started + self.window);
        if self.suppressed > 0 && ended {
            Some(std::mem::take(&mut self.suppressed))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::auth::Authenticator;

    /// A `MakeWriter` into a shared buffer: what the tests read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` with a subscriber writing into a buffer, and returns what it wrote.
    fn capture(filter: &str, format: LogFormat, f: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = subscriber(&filter.parse().unwrap(), format, move || writer.clone());
        tracing::subscriber::with_default(subscriber, f);
        out.text()
    }

    #[test]
    fn log_levels_and_directives_parse_or_say_what_is_accepted() {
        for ok in [
            "error",
            "warn",
            "info",
            "debug",
            "trace",
            "off",
            "INFO",
            " wsgate=debug , warn ",
        ] {
            assert!(ok.parse::<LogFilter>().is_ok(), "{ok}");
        }
        assert_eq!(
            " wsgate=debug , warn ".parse::<LogFilter>().unwrap().to_string(),
            "wsgate=debug,warn"
        );
        assert_eq!(LogFilter::default().to_string(), "info");
        assert_eq!(LogFilter::default(), "info".parse().unwrap());
        // A typo must not become a target name that silently filters everything out.
        for bad in ["verbose", "inf", "", "wsgate=loud", "=debug", "a b=info", "info,debug"] {
            let e = bad.parse::<LogFilter>().unwrap_err();
            assert!(e.contains("error, warn, info, debug, trace"), "{bad}: {e}");
        }
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!(" text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert_eq!("yaml".parse::<LogFormat>(), Err("text or json".to_owned()));
    }

    #[test]
    fn the_filter_selects_by_level_and_target() {
        let out = capture("warn", LogFormat::Text, || {
            tracing::info!("quiet");
            tracing::warn!(shard = 3, "loud");
        });
        assert!(
            !out.contains("quiet") && out.contains("loud") && out.contains("shard=3"),
            "{out}"
        );
        let out = capture("wsgate::logging=debug", LogFormat::Text, || {
            tracing::debug!("ours");
            tracing::error!(target: "other", "theirs");
        });
        assert!(out.contains("ours") && !out.contains("theirs"), "{out}");
    }

    #[test]
    fn json_is_one_object_per_line_with_the_fields_at_the_top() {
        let out = capture("info", LogFormat::Json, || {
            tracing::info!(shard = 1, reason = "test", "first");
            tracing::warn!(error = %std::io::Error::from_raw_os_error(libc::EMFILE), "second");
        });
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0]["message"], "first");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["shard"], 1);
        assert_eq!(lines[0]["reason"], "test");
        assert!(lines[0]["timestamp"].is_string());
        assert!(lines[1]["error"].as_str().unwrap().contains("Too many open files"));
    }

    #[test]
    fn rate_limit_lets_n_through_per_window_then_sums_up_the_rest() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut limit = RateLimit::new(3, Duration::from_secs(1));
        assert_eq!(limit.poll_suppressed(t0), None);
        let passed = (0..10).filter(|&i| limit.handle_event(ms(i * 10))).count();
        assert_eq!(passed, 3);
        // Not before the window is over.
        assert_eq!(limit.poll_suppressed(ms(999)), None);
        assert_eq!(limit.poll_suppressed(ms(1000)), Some(7));
        assert_eq!(limit.poll_suppressed(ms(1001)), None, "said once");
        // A new window lets three through again.
        assert!((0..3).all(|i| limit.handle_event(ms(1500 + i))));
        assert!(!limit.handle_event(ms(1600)));
        // Events held back in a window are summed up once it ends, even if more came
        // in the next window.
        assert!(limit.handle_event(ms(2600)));
        assert_eq!(limit.poll_suppressed(ms(2700)), None);
        assert_eq!(limit.poll_suppressed(ms(3600)), Some(1));
        // A quiet limit never reports.
        let mut quiet = RateLimit::per_shard();
        assert!(quiet.handle_event(t0));
        assert_eq!(quiet.poll_suppressed(ms(5000)), None);
    }

    /// The start-up events of a configuration holding every kind of secret, and the
    /// errors of configurations whose secrets are wrong, never show a secret.
    #[test]
    fn no_secret_reaches_the_log() {
        use crate::cli::{Command, load_from};

        let api_key = "api-key-SECRET-0123456789";
        let hmac = "hmac-SECRET-that-is-longer-than-32-bytes";
        let token_secret = "short-hmac-SECRET";
        let no_env = |_: &str| None;
        let env = |name: &str| (name == "WSGATE_API_KEY").then(|| api_key.to_owned());
        let out = capture("trace", LogFormat::Text, || {
            let Ok(Command::Serve(cfg)) = load_from(["wsgate", "--auth-hmac-secret", hmac], &env) else {
                panic!("a valid configuration")
            };
            assert!(cfg.api_key.is_some());
            let auth = Authenticator::new(&cfg.auth).unwrap();
            let report = crate::sys::startup_report(&cfg, 1024);
            crate::sys::log_startup(&cfg, 1024, &report, &auth);
            tracing::info!(config = ?cfg, "the whole configuration, debug-printed");
            // A secret too short for HS256: the error main logs.
            let Ok(Command::Serve(short)) = load_from(["wsgate", "--auth-hmac-secret", token_secret], &no_env) else {
                panic!("parses; the authenticator refuses it")
            };
            let e = Authenticator::new(&short.auth).unwrap_err();
            tracing::error!(error = %e, "invalid authentication configuration");
            // A key the config refuses: the error `ConfigError::exit` logs.
            let e = load_from(["wsgate", "--api-key", "SECRET with spaces!"], &no_env).unwrap_err();
            e.log();
        });
        assert!(out.contains("authentication") && out.contains("mode=\"jwt\""), "{out}");
        assert!(out.contains("cannot load the configuration"), "{out}");
        assert!(!out.contains("SECRET"), "a secret reached the log:\n{out}");
    }
}
