//! The gateway's configuration: command-line flags, `WSGATE_*` environment variables and
//! a TOML file, merged and validated into one [`Config`].
//!
//! [`crate::cli`] parses the command line once and hands the serve flags to
//! [`load_serve`]; the result is a checked `Config` or a [`ConfigError`] that says which
//! key or flag is wrong and what it accepts. Nothing past start-up reads flags, the
//! environment or the file again.
//!
//! # One table of options
//!
//! Every option is one row of the `options!` table below: its key, where it lands in
//! [`Config`] (a field of its own, with type, default and rustdoc, or a field of
//! [`Limits`], [`MsgLimits`], [`crate::auth::AuthConfig`] or [`crate::edge::EdgeConfig`]),
//! its kind (which parser, range and file syntax), its value name, `--help` heading and
//! help line. From the table come the `Config` fields and `Config::default`, [`KEYS`],
//! the clap arguments, the merge of the sources, the range checks and the file dump
//! ([`Config::to_toml`]). Adding an option is one row (plus the code that uses it).
//! Relations between options (`drain_timeout` at least `drain_window`, ...) are written
//! out in [`Config::validate`].
//!
//! # Sources and precedence
//!
//! Every option has one snake_case key (`max_connections`) and three spellings of it:
//! the flag `--max-connections`, the environment variable `WSGATE_MAX_CONNECTIONS` and
//! the file key `max_connections`. For each option the first source that sets it wins:
//!
//! 1. the flag,
//! 2. the environment variable,
//! 3. the file named by `--config` (or `WSGATE_CONFIG`),
//! 4. the default (the `DEFAULT_*` constants below, or the default of the struct the
//!    option lands in).
//!
//! How: clap parses every flag as optional text with no default, so "not given" stays
//! visible, and each option is resolved on its own by walking the sources in that order
//! and parsing the first value found. Flags, variables and file values therefore go
//! through the same parser, and an error names where the bad value came from. The
//! environment is read through a lookup function (not by clap), so [`load_serve`] can be
//! tested without touching the process environment.
//!
//! # Value syntax
//!
//! - **Durations** need a unit: `250ms`, `10s`, `2m`, `1h` (whole numbers). A bare number
//!   is refused: `30000` meant as milliseconds would otherwise become eight hours.
//! - **Byte sizes** are a plain number of bytes or a number with `B`, `KiB`, `MiB`,
//!   `GiB` or `TiB` (powers of 1024, suffix case-insensitive). `KB`, `MB`, `k` and the
//!   like are refused as ambiguous (1000 or 1024?).
//! - **Counts** are plain integers; sizes and counts may use `_` between digits
//!   (`1_000_000`), as TOML does.
//! - **Booleans** are `true` or `false`; the flag `--echo` alone means `--echo=true`.
//! - **Lists** are repeated flags or comma-separated values (`--paths /ws,/chat`), a
//!   comma-separated variable (`WSGATE_PATHS=/ws,/chat`) or a TOML array. An empty value
//!   (`--allowed-origins=`) is the empty list.
//! - **Addresses** are `IP:PORT` (`0.0.0.0:8080`, `[::]:8080`); no host names, so
//!   start-up never waits on DNS.
//!
//! The syntax of sizes and durations is [`crate::units`]'s. In the file, sizes and
//! counts may be TOML integers or strings, durations strings, `echo` a boolean and lists
//! arrays of strings. A key that is not an option is an error, so a misspelt key cannot
//! silently leave a default in force.//!
//! # Why one long file
//!
//! About 800 of its lines are the option table itself (one row per option: key, type,
//! default, kind, help), which is the point: every option reviewed side by side. The
//! machinery that turns rows into clap arguments, merges sources and checks ranges sits
//! beside it because the `options!` macro and the `Kind` implementations change together.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::limits::{InvalidLimits, Limits};
use crate::msg::MsgLimits;
use crate::units::{GIB, KIB, MIB, TIB, format_bytes, format_duration, is_ambiguous_size, split_number};
// Kept at their old paths: `config::parse_size` and friends predate `units`.
pub use crate::units::{parse_duration, parse_size};

/// Default for [`Config::listen`]: every interface, port 8080.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
/// Default for [`Config::admin_listen`]: loopback only, because `/metrics` tells anyone
/// who can reach it how loaded the box is; expose it deliberately.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9090));
/// Default for [`Config::max_connections`]: the scale the gateway is built for.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1_000_000;
/// Default for [`Config::max_handshakes_per_shard`]: enough for a reconnect storm to
/// proceed at full speed while bounding the header bytes buffered (1024 × 8 KiB = 8 MiB
/// per shard at the default header limit).
pub const DEFAULT_MAX_HANDSHAKES_PER_SHARD: usize = 1024;
/// Default for [`Config::handshake_timeout`]: long enough for a slow mobile link, short
/// enough that a client that opens a socket and sends nothing frees its slot soon.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Config::listen_backlog`]: as deep as most kernels allow; the kernel
/// silently caps it at `net.core.somaxconn` (see `sysctl/99-wsgate.conf`).
pub const DEFAULT_LISTEN_BACKLOG: u32 = 65_535;
/// Default for [`Config::send_queue_bytes`]: a few hundred chat messages behind a slow
/// reader before we give up on it.
pub const DEFAULT_SEND_QUEUE_BYTES: usize = 256 * KIB as usize;
/// Default for [`Config::shard_send_budget_bytes`].
pub const DEFAULT_SHARD_SEND_BUDGET_BYTES: usize = GIB as usize;
/// Default for [`Config::read_buffer_bytes`]: one read drains a whole socket buffer's
/// worth of small frames.
pub const DEFAULT_READ_BUFFER_BYTES: usize = 64 * KIB as usize;
/// Default for [`Config::drain_window`].
pub const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_secs(10);
/// Default for [`Config::drain_timeout`]: the drain window plus time for clients to
/// answer the close frames. `sysctl/wsgate.service` stops waiting a little later.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`Config::paths`].
pub const DEFAULT_PATH: &str = "/ws";
/// Where the TLS listener binds when [`Config::tls_cert`] is set and
/// [`Config::tls_listen`] is not: every interface, port 8443 (plain WebSocket stays on
/// [`Config::listen`], so both run side by side).
pub const DEFAULT_TLS_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8443));
/// Default for [`Config::fsync_window`]: no wait. The batch is then whatever arrived
/// while the previous sync ran, which is group commit without a timer: on this
/// project's test machine (an `fdatasync` of a preallocated segment takes about
/// 0.25 ms) a 1 ms window raised user-to-user p50 from 0.63 to 0.82 ms and p99 to
/// 1.9-2.0 ms, for 38% fewer syncs (figures in the README). A window is for volumes that
/// ration syncs (an IOPS quota).
pub const DEFAULT_FSYNC_WINDOW: Duration = Duration::ZERO;
/// Default for [`Config::data_max_bytes`].
pub const DEFAULT_DATA_MAX_BYTES: u64 = 8 * GIB;
/// Default for [`Config::segment_bytes`].
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * MIB;
/// Accepted [`Config::fsync_window`]: beyond 100 ms every ack would wait visibly.
pub const FSYNC_WINDOW_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_millis(100);
/// Accepted [`Config::data_max_bytes`]: at least a few segments.
pub const DATA_MAX_BYTES_RANGE: RangeInclusive<u64> = 16 * MIB..=(1 << 50);
/// Accepted [`Config::segment_bytes`]: a record (a message of at most 16 MiB plus its
/// fields) must fit in one segment.
pub const SEGMENT_BYTES_RANGE: RangeInclusive<u64> = 32 * MIB..=4 * GIB;
/// Default for [`Config::redis_outbox_bytes`].
pub const DEFAULT_REDIS_OUTBOX_BYTES: usize = 16 * MIB as usize;
/// Accepted [`Config::redis_outbox_bytes`].
pub const REDIS_OUTBOX_BYTES_RANGE: RangeInclusive<u64> = 64 * KIB..=GIB;
/// Default for [`Config::redis_command_timeout`].
pub const DEFAULT_REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Accepted [`Config::redis_command_timeout`].
pub const REDIS_COMMAND_TIMEOUT_RANGE: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(60);
/// Default for [`Config::node_ttl`]: a killed node leaves presence within 10 s.
pub const DEFAULT_NODE_TTL: Duration = Duration::from_secs(10);
/// Accepted [`Config::node_ttl`].
pub const NODE_TTL_RANGE: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(300);
/// Default for [`Config::tick`]: heartbeats and timeouts are seconds long, so 100 ms of
/// slack is invisible, and ten wake-ups a second per shard cost nothing.
pub const DEFAULT_TICK: Duration = Duration::from_millis(100);

/// Accepted [`Config::shards`]. Each shard is a pinned thread with its own io_uring,
/// listener socket and buffers; no machine we target has more than 1024 cores, and more
/// shards than cores only adds contention.
pub const SHARDS_RANGE: RangeInclusive<usize> = 1..=1024;
/// Accepted [`Config::max_connections`] (and it must be at least [`Config::shards`]).
/// Every connection is a file descriptor, and 2^30 is beyond what any kernel's
/// `fs.nr_open` or any box's memory allows.
pub const MAX_CONNECTIONS_RANGE: RangeInclusive<usize> = 1..=(1 << 30);
/// Accepted [`Config::max_handshakes_per_shard`]: each handshake in progress may buffer
/// up to `max_header_bytes`, so the ceiling bounds that memory.
pub const MAX_HANDSHAKES_PER_SHARD_RANGE: RangeInclusive<usize> = 1..=65_536;
/// Accepted [`Config::handshake_timeout`].
pub const HANDSHAKE_TIMEOUT_RANGE: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(300);
/// Accepted [`Config::listen_backlog`]: `listen(2)` takes a C `int`.
pub const LISTEN_BACKLOG_RANGE: RangeInclusive<u32> = 1..=(i32::MAX as u32);
/// Accepted [`Config::send_queue_bytes`]: below 4 KiB a single ordinary message would
/// mark its reader slow.
pub const SEND_QUEUE_BYTES_RANGE: RangeInclusive<u64> = 4 * KIB..=GIB;
/// Default for [`Config::compression_min_bytes`]: below a few hundred bytes deflate
/// saves little (JSON chat messages of 100 bytes shrink by a third) for a compressor
/// call per message.
pub const DEFAULT_COMPRESSION_MIN_BYTES: u64 = 256;
/// Accepted [`Config::compression_level`].
pub const COMPRESSION_LEVEL_RANGE: RangeInclusive<u32> = 1..=9;
/// Accepted [`Config::compression_min_bytes`].
pub const COMPRESSION_MIN_BYTES_RANGE: RangeInclusive<u64> = 0..=GIB;
/// Accepted [`Config::shard_send_budget_bytes`] (and it must be at least
/// `send_queue_bytes`, or one connection could never fill its own queue).
pub const SHARD_SEND_BUDGET_BYTES_RANGE: RangeInclusive<u64> = 4 * KIB..=TIB;
/// Accepted [`Config::read_buffer_bytes`]: at least one page; more than 16 MiB per shard
/// buys nothing, as a socket rarely holds that much unread.
pub const READ_BUFFER_BYTES_RANGE: RangeInclusive<u64> = 4 * KIB..=16 * MIB;
/// Accepted [`Config::drain_window`]; zero sends every close frame at once.
pub const DRAIN_WINDOW_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(3600);
/// Accepted [`Config::drain_timeout`] (and it must be at least `drain_window`).
pub const DRAIN_TIMEOUT_RANGE: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(3600);
/// Accepted [`Config::tick`]: below 10 ms the wheel spins for nothing; above 1 s
/// timeouts become visibly late.
pub const TICK_RANGE: RangeInclusive<Duration> = Duration::from_millis(10)..=Duration::from_secs(1);
/// Accepted `max_header_bytes` ([`Limits::max_header_bytes`]); at most 1 MiB because
/// every handshake in progress may buffer this much.
pub const MAX_HEADER_BYTES_RANGE: RangeInclusive<u64> = 64..=MIB;
/// Accepted `max_headers` ([`Limits::max_headers`]).
pub const MAX_HEADERS_RANGE: RangeInclusive<usize> = 1..=1024;
/// Accepted `max_request_line_bytes` ([`Limits::max_request_line_bytes`]).
pub const MAX_REQUEST_LINE_BYTES_RANGE: RangeInclusive<u64> = 16..=MIB;
/// Accepted `max_frame_bytes` and `max_message_bytes`: a message is assembled in one
/// buffer, kept below 4 GiB (see `Limits::validate`).
pub const MAX_MESSAGE_BYTES_RANGE: RangeInclusive<u64> = 1..=(u32::MAX as u64);
/// Accepted `close_timeout` ([`Limits::close_timeout`]).
pub const CLOSE_TIMEOUT_RANGE: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(300);
/// Accepted `ping_interval` and `idle_timeout` ([`Limits::ping_interval`],
/// [`Limits::idle_timeout`]).
pub const HEARTBEAT_RANGE: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(86_400);

/// Accepted `history_max_messages` and `offline_max_messages` ([`MsgLimits`]): 0 keeps
/// nothing (every resume resyncs; messages to offline users are only in history).
pub const MSG_COUNT_RANGE: RangeInclusive<usize> = 0..=1_000_000;
/// Accepted `history_max_bytes` and `offline_max_bytes`, per inbox, room or queue.
pub const MSG_BYTES_RANGE: RangeInclusive<u64> = 0..=GIB;
/// Accepted `history_max_age`.
pub const HISTORY_MAX_AGE_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(7 * 86_400);
/// Accepted `offline_max_age`.
pub const OFFLINE_MAX_AGE_RANGE: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(30 * 86_400);
/// Accepted `max_rooms_per_connection`: each room a connection is in costs an entry on
/// its shard and a member count at the room's owner.
pub const MAX_ROOMS_PER_CONNECTION_RANGE: RangeInclusive<usize> = 0..=10_000;
/// Accepted [`MsgLimits::max_owner_entries`]: at least one entry; 2^32 entries of ~200
/// bytes are more memory than any box has.
pub const MAX_OWNER_ENTRIES_RANGE: RangeInclusive<usize> = 1..=(1 << 32);
/// Accepted `max_room_name_bytes`.
pub const MAX_ROOM_NAME_BYTES_RANGE: RangeInclusive<u64> = 1..=4 * KIB;
/// Accepted `max_user_id_bytes`: no token can name a longer user
/// ([`crate::auth::MAX_USER_ID_BYTES`]).
pub const MAX_USER_ID_BYTES_RANGE: RangeInclusive<u64> = 1..=crate::auth::MAX_USER_ID_BYTES as u64;
/// Accepted `max_payload_bytes` (and it must fit in `max_message_bytes`).
pub const MAX_PAYLOAD_BYTES_RANGE: RangeInclusive<u64> = 1..=(u32::MAX as u64);
/// Accepted `presence_event_max_members`: 0 sends counts only.
pub const PRESENCE_EVENT_MAX_MEMBERS_RANGE: RangeInclusive<usize> = 0..=100_000;
/// Accepted `mesh_ring_depth`: slots of each cross-shard ring; memory is
/// `shards × (shards - 1) × depth` slots of about 100 bytes.
pub const MESH_RING_DEPTH_RANGE: RangeInclusive<usize> = 2..=(1 << 20);
/// Accepted `mesh_ring_full_wait`: a data message waits at most this long for room in a
/// full ring before it is shed.
pub const MESH_RING_FULL_WAIT_RANGE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(1);

const _: () = assert!(DEFAULT_DRAIN_TIMEOUT.as_millis() >= DEFAULT_DRAIN_WINDOW.as_millis());
const _: () = assert!(DEFAULT_SEND_QUEUE_BYTES <= DEFAULT_SHARD_SEND_BUDGET_BYTES);
const _: () = assert!(DEFAULT_READ_BUFFER_BYTES as u64 >= *READ_BUFFER_BYTES_RANGE.start());
const _: () = assert!(DEFAULT_TICK.as_millis() >= TICK_RANGE.start().as_millis());
const _: () = assert!(DEFAULT_TICK.as_millis() <= TICK_RANGE.end().as_millis());

/// Accepted rates and bursts of the edge limits (0 turns a limit off).
pub const EDGE_RATE_RANGE: RangeInclusive<u32> = 0..=1_000_000;
/// Accepted `max_connections_per_ip` and `max_connections_per_user` (0: no cap).
pub const EDGE_COUNT_RANGE: RangeInclusive<u32> = 0..=10_000_000;
/// Accepted `max_tracked_ips`.
pub const MAX_TRACKED_IPS_RANGE: RangeInclusive<u32> = 64..=100_000_000;

// ---------------------------------------------------------------------------------------
// The table of options
// ---------------------------------------------------------------------------------------

/// Generates everything that is spelled once per option from one row per option.
///
/// A row is
///
/// ```text
/// /// rustdoc of the Config field          (own fields only)
/// key: Type = default,                     (a field of Config itself), or
/// key => sub.field,                        (a field of a struct inside Config)
///     Kind, "VALUE NAME", "Help heading",
///     "Help line, as --help shows it";
/// ```
///
/// and the rows, in `--help` order, follow the `Config` struct header, which holds the
/// fields that are not options (the sub-structs). Out come: the `Config` struct and its
/// `Default`, [`KEYS`], `option_args` (the clap arguments), `resolve` (the merge of the
/// sources), `Config::check_ranges` and `Config::value` (what `--help` and `to_toml`
/// show). The kinds are the types implementing `Kind` at the end of this file.
macro_rules! options {
    // Where a row's value lives: `c.key` for an own field, else the path given.
    (@place $c:ident $key:ident) => { $c.$key };
    (@place $c:ident $key:ident $($place:ident).+) => { $c.$($place).+ };

    // The struct and its Default: rows are taken one at a time (a muncher), since only
    // own rows become fields.
    (@config [$($field:tt)*] [$($default:tt)*] $head:tt
        $(#[doc = $doc:literal])* $key:ident : $ty:ty = $value:expr ,
        $kind:expr , $name:literal , $heading:literal , $help:literal ;
        $($rest:tt)*
    ) => {
        options!(@config [$($field)* $(#[doc = $doc])* pub $key: $ty,] [$($default)* $key: $value,] $head $($rest)*);
    };
    (@config [$($field:tt)*] [$($default:tt)*] $head:tt
        $key:ident => $($place:ident).+ ,
        $kind:expr , $name:literal , $heading:literal , $help:literal ;
        $($rest:tt)*
    ) => {
        options!(@config [$($field)*] [$($default)*] $head $($rest)*);
    };
    (@config [$($field:tt)*] [$($default:tt)*] {
        $(#[$attr:meta])*
        pub struct $config:ident {
            $( $(#[doc = $ndoc:literal])* pub $nested:ident : $nty:ty ),* $(,)?
        }
    }) => {
        $(#[$attr])*
        pub struct $config {
            $($field)*
            $( $(#[doc = $ndoc])* pub $nested: $nty, )*
        }

        impl Default for $config {
            fn default() -> Self {
                Self {
                    $($default)*
                    $( $nested: <$nty>::default(), )*
                }
            }
        }
    };

    ($head:tt
        $(
            $(#[doc = $doc:literal])* $key:ident $(: $ty:ty = $value:expr)? $(=> $($place:ident).+)? ,
            $kind:expr , $name:literal , $heading:literal , $help:literal ;
        )*
    ) => {
        options!(@config [] [] $head
            $( $(#[doc = $doc])* $key $(: $ty = $value)? $(=> $($place).+)? , $kind , $name , $heading , $help ; )*
        );

        /// Every option key, in `--help` order. The file accepts exactly these keys, and
        /// each has the flag `--<key with dashes>` and the variable `WSGATE_<KEY>`.
        pub const KEYS: &[&str] = &[$(stringify!($key)),*];

        /// The clap argument of every option, in `--help` order, help lines unannotated.
        fn option_args() -> Vec<clap::Arg> {
            vec![$(
                ArgShape::shape(
                    &$kind,
                    clap::Arg::new(stringify!($key))
                        .long(stringify!($key).replace('_', "-"))
                        .value_name($name)
                        .help_heading($heading)
                        .help($help)
                        .value_parser(clap::builder::ValueParser::string())
                        .action(clap::ArgAction::Set),
                ),
            )*]
        }

        /// Every option from its first source, over the defaults, in table order.
        fn resolve(s: &Sources<'_>, mut flags: ServeFlags) -> Result<Config, ConfigError> {
            let mut c = Config::default();
            $(
                Kind::merge(
                    &$kind,
                    s,
                    stringify!($key),
                    flags.take(stringify!($key)),
                    &mut options!(@place c $key $($($place).+)?),
                )?;
            )*
            Ok(c)
        }

        impl Config {
            /// Every option within its accepted range (a `Config` built in code is held
            /// to the same ranges as one parsed from text).
            fn check_ranges(&self) -> Result<(), ConfigError> {
                let c = self;
                $( Kind::check(&$kind, stringify!($key), &options!(@place c $key $($($place).+)?))?; )*
                Ok(())
            }

            /// The value of option `key` in config syntax (durations and sizes with
            /// units), or `None` for a key that is not an option.
            fn value(&self, key: &str) -> Option<Value> {
                let c = self;
                match key {
                    $( stringify!($key) => Some(Kind::show(&$kind, &options!(@place c $key $($($place).+)?))), )*
                    _ => None,
                }
            }
        }
    };
}

options! {
    {
        /// Everything the server needs to start, checked: [`load_serve`] (and so
        /// [`crate::cli::load`]) only returns a `Config` that passed [`Config::validate`].
        /// The fields before the four sub-structs are options of their own (one row each
        /// in the table); each sub-struct's fields are options too, with their defaults
        /// in the sub-struct's `Default`.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct Config {
            /// Token authentication before the upgrade (`auth_*` keys; see [`crate::auth`]).
            pub auth: crate::auth::AuthConfig,
            /// Limits at the edge: upgrade rate and connections per client address, connections
            /// per user, message rate per connection, trusted proxies (see [`crate::edge`]).
            pub edge: crate::edge::EdgeConfig,
            /// Protocol limits enforced per connection (header, frame and message sizes,
            /// heartbeat and close timeouts). Each field has its own flag, variable and file key
            /// of the same name.
            pub limits: Limits,
            /// Messaging limits: history, offline queues, rooms, name and payload sizes,
            /// presence, cross-shard rings (see [`MsgLimits`]). Each field has its own key; the
            /// ring keys are `mesh_ring_depth` and `mesh_ring_full_wait`.
            pub msg: MsgLimits,
        }
    }

    /// The WebSocket listener. Every shard binds its own `SO_REUSEPORT` socket to it, so
    /// the kernel spreads new connections over the shards.
    listen: SocketAddr = DEFAULT_LISTEN,
        Addr, "IP:PORT", "Listeners",
        "WebSocket listener address; each shard binds its own SO_REUSEPORT socket to it";
    /// The admin listener: `/healthz`, `/readyz`, `/metrics`, served by a plain thread
    /// off the shard cores (see [`crate::admin`]). Must not collide with `listen`.
    admin_listen: SocketAddr = DEFAULT_ADMIN_LISTEN,
        Addr, "IP:PORT", "Listeners",
        "Admin listener address (/healthz, /readyz, /metrics). Keep it private";

    /// `api_key`: the key the backend API on the admin listener requires
    /// (`Authorization: Bearer <key>`), at least [`MIN_API_KEY_BYTES`]. Neither this nor
    /// `api_key_file`: the API is off (its routes answer 404). Prefer `api_key_file`: a
    /// flag shows in `ps`. Never written out by [`Config::to_toml`].
    api_key: Option<crate::auth::Secret> = None,
        Hidden, "KEY", "Backend API",
        "Key of the backend API on the admin listener (Authorization: Bearer KEY), at least 16 bytes. \
        Unset: the API is off. Prefer --api-key-file: a flag shows in ps";
    /// `api_key_file`: a file holding the API key (one trailing newline ignored), read
    /// at start-up by [`Config::load_api_key`].
    api_key_file: Option<PathBuf> = None,
        FilePath, "FILE", "Backend API",
        "File holding the backend API key (one trailing newline ignored)";

    /// `listen(2)` backlog of each shard's socket: connections the kernel completes before
    /// we accept them. The kernel caps it at `net.core.somaxconn`; when the queue is full
    /// the kernel drops SYNs and clients retry.
    listen_backlog: u32 = DEFAULT_LISTEN_BACKLOG,
        Count(LISTEN_BACKLOG_RANGE), "N", "Listeners",
        "listen(2) backlog per shard socket. The kernel caps it at net.core.somaxconn; when full, the \
        kernel drops SYNs and clients retry";

    /// Number of shards (threads with their own io_uring). Shard `i` is pinned to CPU
    /// `i % cpus`. Default: the CPUs available to the process. Range: [`SHARDS_RANGE`].
    shards: usize = default_shards(),
        Count(SHARDS_RANGE), "N", "Capacity",
        "Shards: pinned threads with their own io_uring; shard i runs on CPU i % CPUs. 1 to 1024";
    /// Upgraded connections open at once, all shards together. Each shard admits
    /// [`Config::connections_per_shard`]; beyond that a new connection is refused with 503
    /// and counted as `connection_limit`. Must be at least `shards`.
    max_connections: usize = DEFAULT_MAX_CONNECTIONS,
        Count(MAX_CONNECTIONS_RANGE), "N", "Capacity",
        "Open WebSocket connections, all shards together (each shard takes its share, rounded up). \
        Beyond: refused with 503, counted as connection_limit";
    /// Handshakes in progress at once on one shard. Beyond it a new connection is refused
    /// with 503 and counted as `handshake_limit`, which bounds the header bytes buffered
    /// during a reconnect storm.
    max_handshakes_per_shard: usize = DEFAULT_MAX_HANDSHAKES_PER_SHARD,
        Count(MAX_HANDSHAKES_PER_SHARD_RANGE), "N", "Capacity",
        "Handshakes in progress at once per shard. Beyond: refused with 503, counted as handshake_limit";
    /// Time from accept to a complete upgrade request. Beyond it the connection is closed
    /// and counted as `handshake_timeout`, so silent sockets cannot hold handshake slots.
    handshake_timeout: Duration = DEFAULT_HANDSHAKE_TIMEOUT,
        Dur(HANDSHAKE_TIMEOUT_RANGE), "DURATION", "Capacity",
        "Time from accept to a complete upgrade request. Beyond: connection closed, counted as \
        handshake_timeout";

    /// Bytes queued for sending on one connection behind the frame being written. A
    /// connection whose backlog would grow past it is a slow consumer: closed and
    /// counted, so one reader cannot hold the memory meant for many. The frame being
    /// written does not count, so a reader that keeps up always receives a message of
    /// the largest size (`max_message_bytes`) even with a smaller cap.
    send_queue_bytes: usize = DEFAULT_SEND_QUEUE_BYTES,
        Size(SEND_QUEUE_BYTES_RANGE), "SIZE", "Memory",
        "Bytes queued on one connection behind the frame being written. Beyond: the connection is closed \
        as a slow consumer and counted";
    /// Bytes queued for sending on all connections of one shard together. When it is
    /// reached, the connection whose queue is growing is closed as slow, so a broadcast to
    /// many slow readers cannot exhaust memory. At least `send_queue_bytes`.
    shard_send_budget_bytes: usize = DEFAULT_SHARD_SEND_BUDGET_BYTES,
        Size(SHARD_SEND_BUDGET_BYTES_RANGE), "SIZE", "Memory",
        "Bytes queued for sending on all connections of one shard. Beyond: the connection growing its \
        queue is closed as a slow consumer";
    /// The shard-owned buffer every socket read lands in (idle connections own none).
    /// Bigger means fewer reads per burst; at least 4 KiB.
    read_buffer_bytes: usize = DEFAULT_READ_BUFFER_BYTES,
        Size(READ_BUFFER_BYTES_RANGE), "SIZE", "Memory",
        "Per-shard buffer all socket reads land in (at least 4KiB)";

    max_header_bytes => limits.max_header_bytes,
        Size(MAX_HEADER_BYTES_RANGE), "SIZE", "Protocol limits",
        "Upgrade request size, request line included. Beyond: 431, connection closed";
    max_headers => limits.max_headers,
        Count(MAX_HEADERS_RANGE), "N", "Protocol limits",
        "Number of upgrade request headers. Beyond: 431";
    max_request_line_bytes => limits.max_request_line_bytes,
        Size(MAX_REQUEST_LINE_BYTES_RANGE), "SIZE", "Protocol limits",
        "Request line length (GET /path?query HTTP/1.1). Beyond: 414";
    max_frame_bytes => limits.max_frame_bytes,
        Size(MAX_MESSAGE_BYTES_RANGE), "SIZE", "Protocol limits",
        "Payload of one frame, checked from its header before buffering. Beyond: close 1009";
    max_message_bytes => limits.max_message_bytes,
        Size(MAX_MESSAGE_BYTES_RANGE), "SIZE", "Protocol limits",
        "Payload of one message, all fragments together. Beyond: close 1009";

    ping_interval => limits.ping_interval,
        Dur(HEARTBEAT_RANGE), "DURATION", "Timers",
        "Silence after which the server sends a ping";
    idle_timeout => limits.idle_timeout,
        Dur(HEARTBEAT_RANGE), "DURATION", "Timers",
        "Silence after which the connection is closed as dead (longer than --ping-interval)";
    close_timeout => limits.close_timeout,
        Dur(CLOSE_TIMEOUT_RANGE), "DURATION", "Timers",
        "Wait for the peer's close frame after ours; then the connection is dropped";
    /// On SIGTERM, close frames (1001 "going away") are spread over this window with
    /// jitter, so clients do not all reconnect in the same instant.
    drain_window: Duration = DEFAULT_DRAIN_WINDOW,
        Dur(DRAIN_WINDOW_RANGE), "DURATION", "Timers",
        "On SIGTERM, close frames are spread over this window with jitter, so clients do not reconnect \
        all at once";
    /// On SIGTERM, connections still open this long after draining began are dropped and
    /// the process exits. At least `drain_window`.
    drain_timeout: Duration = DEFAULT_DRAIN_TIMEOUT,
        Dur(DRAIN_TIMEOUT_RANGE), "DURATION", "Timers",
        "On SIGTERM, connections still open this long after draining began are dropped and the process \
        exits (at least --drain-window)";
    /// Resolution of each shard's timer wheel: timeouts fire up to one tick late.
    tick: Duration = DEFAULT_TICK,
        Dur(TICK_RANGE), "DURATION", "Timers",
        "Timer wheel resolution: timeouts fire up to one tick late. 10ms to 1s";

    /// Request paths (before any `?`) that may upgrade; other paths get 404. Each starts
    /// with `/` and fits in `max_request_line_bytes`.
    paths: Vec<String> = vec![DEFAULT_PATH.to_owned()],
        List, "PATH,...", "Routing",
        "Request paths that may upgrade; other paths get 404";
    /// `Origin` header values allowed to upgrade (`https://example.com`); others get 403.
    /// Empty means any origin, including none.
    allowed_origins: Vec<String> = Vec::new(),
        List, "ORIGIN,...", "Routing",
        "Origin header values allowed to upgrade (https://example.com); others get 403. Empty: any origin";
    /// WebSocket subprotocols we speak, most preferred first; the first one the client
    /// also offers is selected. Empty means none is ever selected.
    subprotocols: Vec<String> = Vec::new(),
        List, "NAME,...", "Routing",
        "Subprotocols we speak, most preferred first";
    /// Echo every message back to its sender: the benchmark mode.
    echo: bool = false,
        Flag, "BOOL", "Routing",
        "Echo every message back to its sender (benchmarking). --echo alone means true";
    /// Serve the JavaScript client at `GET /client/wsgate.js` and a chat demo at
    /// `GET /demo` on the WebSocket listener (plain HTTP answers; every other path is
    /// as without it). Off by default: a production gateway serves only its upgrades.
    demo: bool = false,
        Flag, "BOOL", "Routing",
        "Serve the JavaScript client at /client/wsgate.js and a chat demo at /demo on the WebSocket \
        listener. --demo alone means true";

    /// permessage-deflate (RFC 7692): `on` agrees to it when a client offers it, always
    /// without context takeover in either direction, so one compressor and one
    /// inflater per shard serve every connection and an idle connection costs what it
    /// costs without compression. `off` (default) never negotiates it.
    compression: CompressionMode = CompressionMode::Off,
        Parsed, "off|on", "Routing",
        "permessage-deflate when the client offers it (no context takeover: no memory per connection)";
    /// With `compression = on`: messages with fewer payload bytes go uncompressed (small
    /// messages gain little and cost a compressor call).
    compression_min_bytes: u64 = DEFAULT_COMPRESSION_MIN_BYTES,
        Size(COMPRESSION_MIN_BYTES_RANGE), "SIZE", "Routing",
        "With --compression on: smaller messages are sent uncompressed";
    /// With `compression = on`: the zlib level our messages are compressed at, 1
    /// (fastest; the default, since a fan-out compresses every room message once per
    /// shard) to 9. Level 6 shrinks 16 KiB of JSON to 0.25 instead of 0.36 of its size
    /// at about a seventh of the speed (benches/deflate.rs).
    compression_level: u32 = 1,
        Count(COMPRESSION_LEVEL_RANGE), "N", "Routing",
        "With --compression on: zlib level 1 (fastest) to 9 (smallest)";

    /// Where the owners keep messages: `disk` (an append-only journal per shard under
    /// `data_dir`; what an `ack` promised survives a restart and a crash) or `memory`
    /// (nothing survives a restart). `--echo` uses neither.
    store: StoreKind = StoreKind::Disk,
        Parsed, "disk|memory", "Message store",
        "disk: a journal per shard under --data-dir, acked messages survive restarts and crashes. memory: \
        nothing survives a restart";
    /// The directory of the disk store: one subdirectory per shard and a `wsgate.meta`
    /// file naming the shard count the records were written with.
    data_dir: DataDir = DataDir::default(),
        Parsed, "DIR", "Message store",
        "Directory of the disk store (created if missing)";
    /// When the journal is synced to the device before acks go out: `always` (after
    /// every write; records that arrive during a sync share the next write), `batch`
    /// (group commit: one sync covers every record of `fsync_window`; with the default
    /// window of 0 the same as `always`) or `never` (written to the kernel only:
    /// survives a crash of the process, not of the machine).
    fsync: FsyncPolicy = FsyncPolicy::Batch,
        Parsed, "always|batch|never", "Message store",
        "When acks wait for the device: always (a sync per write), batch (one sync per --fsync-window: \
        group commit), never (kernel only: survives a process crash, not a power loss)";
    /// With `fsync = batch`: how long the first record of a batch waits for others
    /// before the write and sync that cover them all. 0: no wait (records that arrive
    /// during a sync still share the next one).
    fsync_window: Duration = DEFAULT_FSYNC_WINDOW,
        Dur(FSYNC_WINDOW_RANGE), "DURATION", "Message store",
        "With --fsync batch: how long records gather before one write and sync covers them all. \
        0s: none (those that arrive during a sync share the next); 500us or 1ms: fewer syncs, \
        later acks";
    /// The disk store's budget, all shards together. When a shard's journal reaches its
    /// share, new sends and publishes are refused with `storage_full` (counted) until a
    /// compaction frees space; a compaction may pass the share by the live data it copies.
    data_max_bytes: u64 = DEFAULT_DATA_MAX_BYTES,
        Size(DATA_MAX_BYTES_RANGE), "SIZE", "Message store",
        "Disk budget of the store, all shards together. Reached: new messages refused with storage_full";
    /// Size at which a shard's journal starts a new segment file. Old segments are deleted
    /// once a compaction restated what they held.
    segment_bytes: u64 = DEFAULT_SEGMENT_BYTES,
        Size(SEGMENT_BYTES_RANGE), "SIZE", "Message store",
        "Journal segment file size; old segments are deleted after a compaction";

    /// `redis://[user[:password]@]host[:port][/db]`: run as one node of a fleet that
    /// shares this Redis (registry, presence, sequences, logs, offline queues, pub/sub
    /// between nodes). Unset: a single box, as without it.
    redis: Option<crate::auth::Secret> = None,
        Hidden, "URL", "Cluster",
        "Redis shared by the fleet: redis://[user[:password]@]host[:port][/db]. Unset: a single box";
    /// A file holding the Redis password (instead of putting it in the URL, which shows
    /// in `ps` when given as a flag).
    redis_password_file: Option<PathBuf> = None,
        FilePath, "FILE", "Cluster",
        "File holding the Redis password (overrides one in the URL)";
    /// PEM roots that verify the Redis server's certificate with `rediss://`. Unset:
    /// the system bundle (`/etc/ssl/certs/ca-certificates.crt`).
    redis_ca: Option<PathBuf> = None,
        FilePath, "FILE", "Cluster",
        "PEM roots for the Redis server's certificate (rediss://). Default: the system bundle";
    /// This node's id in the fleet: the same across its restarts (a restart removes what
    /// the previous life left under it), different from every other node's. Default:
    /// `<hostname>-<port>`.
    node_id: Option<String> = None,
        Text, "ID", "Cluster",
        "This node's id in the fleet, stable across restarts. Default: <hostname>-<port>";
    /// Bytes of commands one shard may queue for Redis and not yet have written (the
    /// outbox; what is in flight is at most as much again). Full: requests are answered
    /// `unavailable` and counted (`wsgate_redis_refused_total`).
    redis_outbox_bytes: usize = DEFAULT_REDIS_OUTBOX_BYTES,
        Size(REDIS_OUTBOX_BYTES_RANGE), "SIZE", "Cluster",
        "Redis commands one shard may queue unwritten. Beyond: requests answered unavailable, counted";
    /// How long a written batch may wait for Redis's replies (a handshake step too);
    /// then the connection is dropped and its requests answered `unavailable`.
    redis_command_timeout: Duration = DEFAULT_REDIS_COMMAND_TIMEOUT,
        Dur(REDIS_COMMAND_TIMEOUT_RANGE), "DURATION", "Cluster",
        "How long Redis may take to answer a batch; then the connection is dropped and reconnected";
    /// How long a node counts as alive without renewing (it renews every quarter of
    /// this, at most every second): a node killed without a drain leaves presence
    /// within it.
    node_ttl: Duration = DEFAULT_NODE_TTL,
        Dur(NODE_TTL_RANGE), "DURATION", "Cluster",
        "A node that stops renewing (killed) leaves presence after this";

    auth_mode => auth.mode,
        Parsed, "jwt|none", "Authentication",
        "jwt: every upgrade needs a valid token (401 otherwise). none: everybody is let in as an \
        anonymous user, for local benchmarks only (a warning says so at start-up)";
    auth_hmac_secret => auth.hmac_secret,
        Hidden, "SECRET", "Authentication",
        "Shared secret for HS256 tokens (at least 32 bytes). Prefer --auth-hmac-secret-file: a flag shows \
        in ps";
    auth_hmac_secret_file => auth.hmac_secret_file,
        FilePath, "FILE", "Authentication",
        "File holding the HS256 shared secret";
    auth_public_key_files => auth.public_key_files,
        List, "FILE,...", "Authentication",
        "Public keys for RS256/PS256/ES256/EdDSA tokens: PEM files or JWKS JSON files";
    auth_algorithms => auth.algorithms,
        List, "ALG,...", "Authentication",
        "Token algorithms accepted (default: each key's usual one). Never none";
    auth_issuer => auth.issuer,
        Text, "ISSUER", "Authentication",
        "Required iss claim. Empty: not checked";
    auth_audience => auth.audience,
        Text, "AUDIENCE", "Authentication",
        "Required aud claim. Empty: tokens carrying an aud are refused";
    auth_leeway => auth.leeway,
        Dur(crate::auth::LEEWAY_RANGE), "DURATION", "Authentication",
        "Clock skew allowed on exp and nbf, 0s to 5m";
    auth_query_param => auth.query_param,
        Text, "NAME", "Authentication",
        "Query parameter that may carry the token (browsers cannot set headers). Empty: off";
    auth_subprotocol_carrier => auth.subprotocol_carrier,
        Flag, "BOOL", "Authentication",
        "Accept the token as an offered subprotocol bearer.<token> (never echoed back)";

    upgrade_rate_per_ip => edge.upgrade_rate_per_ip,
        Count(EDGE_RATE_RANGE), "N", "Edge limits",
        "Upgrade requests per second one client address may sustain (token bucket). Beyond: 429 with \
        Retry-After. 0: off";
    upgrade_burst_per_ip => edge.upgrade_burst_per_ip,
        Count(EDGE_RATE_RANGE), "N", "Edge limits",
        "Upgrade requests one address may make in a burst (the bucket size)";
    max_connections_per_ip => edge.max_connections_per_ip,
        Count(EDGE_COUNT_RANGE), "N", "Edge limits",
        "Open connections per client address. Beyond: 429. 0: no cap (addresses behind carrier NAT carry \
        many users)";
    max_connections_per_user => msg.max_connections_per_user,
        Count(EDGE_COUNT_RANGE), "N", "Edge limits",
        "Open connections per user (token sub). Beyond: see --user-limit-policy. 0: no cap";
    user_limit_policy => msg.user_limit_policy,
        Parsed, "newest|oldest", "Edge limits",
        "newest: a user's oldest connection is closed (1008) for the new one. oldest: the new connection is \
        closed (1008) right after its 101. Kept by the user's owner; --echo has no per-user limit";
    message_rate => edge.message_rate,
        Count(EDGE_RATE_RANGE), "N", "Edge limits",
        "Data messages per second one connection may sustain. Beyond: close 1008 \"message rate exceeded\". \
        0: off";
    message_burst => edge.message_burst,
        Count(EDGE_RATE_RANGE), "N", "Edge limits",
        "Data messages one connection may send in a burst";
    max_tracked_ips => edge.max_tracked_ips,
        Count(MAX_TRACKED_IPS_RANGE), "N", "Edge limits",
        "Client addresses tracked for the per-address limits. Beyond: new addresses are let in uncounted \
        (counted as ip_table_full)";
    trusted_proxies => edge.trusted_proxies,
        List, "CIDR,...", "Edge limits",
        "Proxies (addresses or CIDR networks) whose X-Forwarded-For is believed. Empty: the header is \
        ignored";

    /// PEM certificate chain (leaf first) for `wss://`. With [`Config::tls_key`], turns
    /// on the TLS listener ([`Config::tls_listen_addr`]); re-read on SIGHUP.
    tls_cert: Option<PathBuf> = None,
        FilePath, "FILE", "TLS",
        "PEM certificate chain (leaf first) for wss://; with --tls-key it turns the TLS listener on. \
        Re-read on SIGHUP (a bad file keeps the old one)";
    /// PEM private key of [`Config::tls_cert`] (PKCS#8, PKCS#1 or SEC1).
    tls_key: Option<PathBuf> = None,
        FilePath, "FILE", "TLS",
        "PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1)";
    /// The TLS listener, beside the plain one. Unset with a certificate configured:
    /// [`DEFAULT_TLS_LISTEN`]. Setting it without a certificate is an error.
    tls_listen: Option<SocketAddr> = None,
        Addr, "IP:PORT", "TLS",
        "TLS listener address, beside the plain --listen one";
    /// Stateless TLS session tickets (resumption without server state). Off: clients
    /// resume through the per-process session cache only.
    tls_tickets: bool = true,
        Flag, "BOOL", "TLS",
        "Stateless session tickets for resumption. false: the session cache only";

    history_max_messages => msg.history_max_messages,
        Count(MSG_COUNT_RANGE), "N", "Messaging",
        "Messages kept per inbox and per room for recovery. Beyond: the oldest is forgotten; a client \
        resuming from before it is told to resync";
    history_max_bytes => msg.history_max_bytes,
        Size(MSG_BYTES_RANGE), "SIZE", "Messaging",
        "Bytes kept per inbox and per room history; as above";
    history_max_age => msg.history_max_age,
        Dur(HISTORY_MAX_AGE_RANGE), "DURATION", "Messaging",
        "Age after which history is forgotten; as above";
    offline_max_messages => msg.offline_max_messages,
        Count(MSG_COUNT_RANGE), "N", "Messaging",
        "Messages waiting for an offline user. Beyond: the oldest is dropped and counted";
    offline_max_bytes => msg.offline_max_bytes,
        Size(MSG_BYTES_RANGE), "SIZE", "Messaging",
        "Bytes waiting for an offline user; as above";
    offline_max_age => msg.offline_max_age,
        Dur(OFFLINE_MAX_AGE_RANGE), "DURATION", "Messaging",
        "Age after which an offline message is dropped and counted";
    max_rooms_per_connection => msg.max_rooms_per_connection,
        Count(MAX_ROOMS_PER_CONNECTION_RANGE), "N", "Messaging",
        "Rooms one connection may be in. Beyond: error too_many_rooms";
    max_owner_entries => msg.max_owner_entries,
        Count(MAX_OWNER_ENTRIES_RANGE), "N", "Messaging",
        "Users and rooms one owner shard tracks. A send or publish that would add one beyond: error \
        owner_full (known users and rooms are always served)";
    max_room_name_bytes => msg.max_room_name_bytes,
        Size(MAX_ROOM_NAME_BYTES_RANGE), "SIZE", "Messaging",
        "Bytes of a room name. Beyond: error too_large";
    max_user_id_bytes => msg.max_user_id_bytes,
        Size(MAX_USER_ID_BYTES_RANGE), "SIZE", "Messaging",
        "Bytes of a user id named in a message. Beyond: error too_large";
    max_payload_bytes => msg.max_payload_bytes,
        Size(MAX_PAYLOAD_BYTES_RANGE), "SIZE", "Messaging",
        "Bytes of a message body (its JSON text). Beyond: error too_large";
    presence_event_max_members => msg.presence_event_max_members,
        Count(PRESENCE_EVENT_MAX_MEMBERS_RANGE), "N", "Messaging",
        "Rooms with more members get member counts (once per tick) instead of join/leave events";
    mesh_ring_depth => msg.ring_depth,
        Count(MESH_RING_DEPTH_RANGE), "N", "Messaging",
        "Slots of each cross-shard ring (rounded up to a power of two)";
    mesh_ring_full_wait => msg.ring_full_wait,
        Dur(MESH_RING_FULL_WAIT_RANGE), "DURATION", "Messaging",
        "How long a data message waits for room in a full cross-shard ring before it is shed and counted \
        (the sender gets error overloaded)";

    /// Which diagnostics reach stderr: a level, or `target=level` directives with at most
    /// one bare level (see [`crate::logging::LogFilter`]). Output (a minted token, a
    /// bench report) is not a diagnostic and always goes to stdout.
    log_level: crate::logging::LogFilter = crate::logging::LogFilter::default(),
        Parsed, "LEVEL", "Logging",
        "error, warn, info, debug or trace; or directives with at most one bare level (wsgate::server=debug,info)";
    /// How events are written to stderr: `text` for people, `json` (one object per line)
    /// for log shippers.
    log_format: crate::logging::LogFormat = crate::logging::LogFormat::Text,
        Parsed, "text|json", "Logging",
        "text for people, json for log shippers (one object per line); both on stderr";
}

/// CPUs this process may run on (its affinity mask, cgroup quota aside), at least 1.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One shard per available CPU, within [`SHARDS_RANGE`].
fn default_shards() -> usize {
    available_cpus().clamp(*SHARDS_RANGE.start(), *SHARDS_RANGE.end())
}

impl Config {
    /// Connections one shard admits: `max_connections / shards`, rounded up so the total
    /// is never below the configured one.
    pub fn connections_per_shard(&self) -> usize {
        self.max_connections.div_ceil(self.shards.max(1))
    }

    /// The TLS files, when TLS is configured.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                tickets: self.tls_tickets,
            }),
            _ => None,
        }
    }

    /// Where the TLS listener binds, when TLS is configured.
    pub fn tls_listen_addr(&self) -> Option<SocketAddr> {
        self.tls_files().map(|_| self.tls_listen.unwrap_or(DEFAULT_TLS_LISTEN))
    }

    /// Checks every range and every relation between options. [`load_serve`] calls it; a
    /// `Config` built in code (tests, embedding) should call it too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        self.check_ranges()?;
        l.validate().map_err(ConfigError::Limits)?;
        crate::auth::check_subprotocols(&self.subprotocols).map_err(|e| relation(e.to_string()))?;
        self.edge.validate().map_err(relation)?;

        if let Some(url) = &self.redis {
            let text =
                std::str::from_utf8(url.expose()).map_err(|_| relation("redis: the URL is not UTF-8".to_owned()))?;
            crate::cluster::RedisUrl::parse(text).map_err(|e| relation(format!("redis: {e}")))?;
        }
        if let Some(id) = &self.node_id {
            crate::cluster::owner::check_node_id(id).map_err(relation)?;
        }
        if self.max_connections < self.shards {
            return Err(relation(format!(
                "max_connections ({}) must be at least shards ({}): every shard needs room for one connection",
                self.max_connections, self.shards
            )));
        }
        if self.drain_timeout < self.drain_window {
            return Err(relation(format!(
                "drain_timeout ({}) must be at least drain_window ({}): the deadline would cut the window short",
                format_duration(self.drain_timeout),
                format_duration(self.drain_window)
            )));
        }
        // One message of the largest size must fit in the shard's budget (the
        // connection's cap bounds only what queues behind it).
        let largest_frame = l
            .max_message_bytes
            .saturating_add(crate::proto::frame::MAX_HEADER_LEN as u64);
        if (self.shard_send_budget_bytes as u64) < largest_frame {
            return Err(relation(format!(
                "shard_send_budget_bytes ({}) must hold one message of max_message_bytes ({}) and its header",
                format_bytes(self.shard_send_budget_bytes as u64),
                format_bytes(l.max_message_bytes)
            )));
        }
        if self.shard_send_budget_bytes < self.send_queue_bytes {
            return Err(relation(format!(
                "shard_send_budget_bytes ({}) must be at least send_queue_bytes ({})",
                format_bytes(self.shard_send_budget_bytes as u64),
                format_bytes(self.send_queue_bytes as u64)
            )));
        }
        // A deadline shorter than one tick would fire a whole tick late, i.e. at double
        // its length or worse.
        for (key, timeout) in [
            ("handshake_timeout", self.handshake_timeout),
            ("close_timeout", l.close_timeout),
            ("ping_interval", l.ping_interval),
        ] {
            if timeout < self.tick {
                return Err(relation(format!(
                    "{key} ({}) must be at least tick ({})",
                    format_duration(timeout),
                    format_duration(self.tick)
                )));
            }
        }
        if self.msg.max_payload_bytes as u64 >= l.max_message_bytes {
            return Err(relation(format!(
                "max_payload_bytes ({}) must be below max_message_bytes ({}): the body travels inside a message",
                format_bytes(self.msg.max_payload_bytes as u64),
                format_bytes(l.max_message_bytes)
            )));
        }
        if same_port(self.listen, self.admin_listen) {
            return Err(relation(format!(
                "listen ({}) and admin_listen ({}) would bind the same port",
                self.listen, self.admin_listen
            )));
        }
        self.validate_tls()?;
        self.validate_api_key()?;
        self.validate_lists()
    }

    fn validate_api_key(&self) -> Result<(), ConfigError> {
        if self.api_key.is_some() && self.api_key_file.is_some() {
            return Err(relation("api_key and api_key_file are both set; give one".to_owned()));
        }
        if let Some(key) = &self.api_key {
            check_api_key(key.expose()).map_err(|e| relation(format!("api_key {e}")))?;
        }
        Ok(())
    }

    /// The backend API key in force: `api_key`, or the contents of `api_key_file` (one
    /// trailing newline removed), checked like `api_key`; `None` when neither is set
    /// (the API is off). Errors name the file, never the key.
    pub fn load_api_key(&self) -> Result<Option<crate::auth::Secret>, ConfigError> {
        let Some(path) = &self.api_key_file else {
            return Ok(self.api_key.clone());
        };
        let mut bytes = std::fs::read(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            error: format!("api_key_file: {e}"),
        })?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        check_api_key(&bytes).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            error: format!("api_key_file: the key {e}"),
        })?;
        Ok(Some(crate::auth::Secret::new(bytes)))
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(relation(
                "tls_cert and tls_key go together: set both for wss://, or neither".to_owned(),
            ));
        }
        let Some(tls_listen) = self.tls_listen_addr() else {
            if let Some(addr) = self.tls_listen {
                return Err(relation(format!(
                    "tls_listen ({addr}) needs tls_cert and tls_key: there is no certificate to serve"
                )));
            }
            return Ok(());
        };
        for (key, addr) in [("listen", self.listen), ("admin_listen", self.admin_listen)] {
            if same_port(tls_listen, addr) {
                return Err(relation(format!(
                    "tls_listen ({tls_listen}) and {key} ({addr}) would bind the same port"
                )));
            }
        }
        if self.read_buffer_bytes < crate::tls::MIN_READ_BUFFER_BYTES {
            return Err(relation(format!(
                "read_buffer_bytes ({}) must be at least {} with TLS on: a whole TLS record must fit in it",
                format_bytes(self.read_buffer_bytes as u64),
                format_bytes(crate::tls::MIN_READ_BUFFER_BYTES as u64)
            )));
        }
        Ok(())
    }

    fn validate_lists(&self) -> Result<(), ConfigError> {
        if self.paths.is_empty() {
            return Err(relation("paths must name at least one path (default /ws)".to_owned()));
        }
        // "GET " + path + " HTTP/1.1": a longer path could never be requested.
        let path_max = self.limits.max_request_line_bytes.saturating_sub("GET  HTTP/1.1".len());
        for path in &self.paths {
            let printable = path.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
            if !path.starts_with('/') || !printable || path.len() > path_max {
                return Err(relation(format!(
                    "paths entry {path:?} must start with '/', hold no spaces, '?' or '#', and be at most {path_max} bytes (max_request_line_bytes)"
                )));
            }
        }
        if let Some(dup) = first_duplicate(&self.paths) {
            return Err(relation(format!("paths lists {dup:?} twice")));
        }
        for origin in &self.allowed_origins {
            if origin == "*" {
                return Err(relation(
                    "allowed_origins entry \"*\": leave allowed_origins empty to accept any origin".to_owned(),
                ));
            }
            if !valid_origin(origin) {
                return Err(relation(format!(
                    "allowed_origins entry {origin:?} must be scheme://host[:port] with no path or trailing '/', as browsers send it (or \"null\")"
                )));
            }
        }
        if let Some(dup) = first_duplicate(&self.allowed_origins) {
            return Err(relation(format!("allowed_origins lists {dup:?} twice")));
        }
        for protocol in &self.subprotocols {
            if protocol.is_empty() || !protocol.bytes().all(is_token_byte) {
                return Err(relation(format!(
                    "subprotocols entry {protocol:?} must be an HTTP token (letters, digits and !#$%&'*+-.^_`|~)"
                )));
            }
        }
        if let Some(dup) = first_duplicate(&self.subprotocols) {
            return Err(relation(format!("subprotocols lists {dup:?} twice")));
        }
        Ok(())
    }

    /// This configuration as a config file. Loading it back with `--config` gives the
    /// same `Config`, so it can be printed to show what is in force.
    pub fn to_toml(&self) -> String {
        // Written line by line rather than through a toml::Table, which would sort the
        // keys: this keeps the order of [`KEYS`], where related options sit together.
        let mut out = String::new();
        for key in KEYS {
            let value = match self.value(key) {
                // Secrets are never written out.
                Some(Value::Hidden) => continue,
                Some(Value::Text(s)) => toml::Value::String(s),
                Some(Value::Int(n)) => toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)),
                Some(Value::Bool(b)) => toml::Value::Boolean(b),
                Some(Value::List(items)) => toml::Value::Array(items.into_iter().map(toml::Value::String).collect()),
                None => unreachable!("KEYS and value() come from the same table"),
            };
            out.push_str(&format!("{key} = {value}\n"));
        }
        out
    }
}

/// An option's value, typed as it is written in the file.
enum Value {
    /// A secret: shown as nothing in `--help`, never written by `to_toml`.
    Hidden,
    Text(String),
    Int(u64),
    Bool(bool),
    List(Vec<String>),
}

/// Shortest backend API key accepted: 16 bytes, 128 bits if random.
pub const MIN_API_KEY_BYTES: usize = 16;

/// An API key is sent as a header value: at least [`MIN_API_KEY_BYTES`] of visible
/// ASCII (no spaces or controls), which is what `Authorization: Bearer` carries intact.
fn check_api_key(key: &[u8]) -> Result<(), String> {
    if key.len() < MIN_API_KEY_BYTES {
        return Err(format!("must be at least {MIN_API_KEY_BYTES} bytes"));
    }
    if !crate::auth::is_token68(key) {
        return Err(
            "must be one token68 (letters, digits and -._~+/ with optional trailing =), \
             the only shape a Bearer credential can take"
                .to_owned(),
        );
    }
    Ok(())
}

fn relation(message: String) -> ConfigError {
    ConfigError::Relation(message)
}

fn in_range<T: PartialOrd + Copy>(
    key: &str,
    value: T,
    range: &RangeInclusive<T>,
    show: impl Fn(T) -> String,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(relation(format!(
        "{key} = {} is out of range: accepted {} to {}",
        show(value),
        show(*range.start()),
        show(*range.end())
    )))
}

fn count_in<T: PartialOrd + Copy + fmt::Display>(
    key: &str,
    value: T,
    range: &RangeInclusive<T>,
) -> Result<(), ConfigError> {
    in_range(key, value, range, |n| n.to_string())
}

fn bytes_in(key: &str, value: u64, range: &RangeInclusive<u64>) -> Result<(), ConfigError> {
    in_range(key, value, range, format_bytes)
}

fn duration_in(key: &str, value: Duration, range: &RangeInclusive<Duration>) -> Result<(), ConfigError> {
    in_range(key, value, range, format_duration)
}

/// Whether two listeners would fight over one port: same port, and the same address or
/// either one the wildcard.
fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn first_duplicate(items: &[String]) -> Option<&String> {
    items
        .iter()
        .enumerate()
        .find(|(i, item)| items[..*i].contains(item))
        .map(|(_, item)| item)
}

/// `scheme://host[:port]`, the serialisation browsers put in `Origin`, or `null`.
fn valid_origin(origin: &str) -> bool {
    if origin == "null" {
        return true;
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    let authority_ok =
        !authority.is_empty() && authority.bytes().all(|b| b.is_ascii_graphic() && !b"/?#@".contains(&b));
    scheme_ok && authority_ok
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why no [`Config`] came out. `main` prints it and exits with [`ConfigError::exit_code`]
/// (2 for every error; 0 when the user asked for `--help` or `--version`), or calls
/// [`ConfigError::exit`] which does both.
#[derive(Debug)]
pub enum ConfigError {
    /// The command line did not parse (unknown flag, missing value), or it asked for
    /// `--help` or `--version`: clap's error, whose text is the rendered message, help
    /// or version. See [`ConfigError::is_help_or_version`].
    Cli(clap::Error),
    /// A value that does not parse or is out of range.
    Invalid {
        /// Where it came from: `--flag`, `WSGATE_VARIABLE` or `key in FILE`.
        source: String,
        /// The value as given.
        value: String,
        /// What is accepted, with the range.
        expected: String,
    },
    /// The config file could not be read or is not valid TOML.
    File {
        /// The file, as named by `--config` or `WSGATE_CONFIG`.
        path: String,
        /// What went wrong, with the line for a syntax error.
        error: String,
    },
    /// A key in the config file that is not an option.
    UnknownKey {
        /// The file.
        path: String,
        /// The key as written.
        key: String,
        /// The option probably meant (`max-connections` → `max_connections`).
        suggestion: Option<&'static str>,
    },
    /// A value out of its range in a `Config` built in code, or options that contradict
    /// each other (`drain_timeout` below `drain_window`); the message names both keys.
    Relation(String),
    /// The protocol limits are inconsistent ([`Limits::validate`]).
    Limits(InvalidLimits),
}

impl ConfigError {
    /// The process exit code for this error: 0 for `--help` and `--version`, else 2 (the
    /// usage-error code clap uses too).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Cli(e) => e.exit_code(),
            _ => 2,
        }
    }

    /// Whether this is not an error but the help or version text the user asked for
    /// (print it to stdout and exit 0).
    pub fn is_help_or_version(&self) -> bool {
        matches!(self, Self::Cli(e) if !e.use_stderr())
    }

    /// Prints the message where it belongs and exits with [`ConfigError::exit_code`]:
    /// clap prints help and version to stdout and usage errors to stderr; any other
    /// error is logged ([`ConfigError::log`]), so the subscriber must be installed.
    pub fn exit(&self) -> ! {
        match self {
            Self::Cli(e) => e.exit(),
            other => {
                other.log();
                std::process::exit(other.exit_code())
            }
        }
    }

    /// Logs this error as one `cannot load the configuration` event (its text never holds a
    /// secret: a refused key or secret is described, not quoted).
    pub fn log(&self) {
        tracing::error!(error = %self, "cannot load the configuration");
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cli(e) => write!(f, "{}", e.render().to_string().trim_end()),
            Self::Invalid {
                source,
                value,
                expected,
            } => {
                write!(f, "invalid value {value:?} for {source}: expected {expected}")
            }
            Self::File { path, error } => write!(f, "config file {path}: {error}"),
            Self::UnknownKey { path, key, suggestion } => {
                write!(f, "config file {path}: unknown key {key:?}")?;
                match suggestion {
                    Some(s) => write!(f, " (did you mean {s:?}?)"),
                    None => write!(f, " (the keys are the option names with underscores, see --help)"),
                }
            }
            Self::Relation(message) => write!(f, "invalid configuration: {message}"),
            Self::Limits(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Cli(e) => Some(e),
            Self::Limits(e) => Some(e),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The message store's option types
// ---------------------------------------------------------------------------------------

/// [`Config::compression`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionMode {
    /// permessage-deflate is never negotiated (default).
    Off,
    /// Negotiated when offered.
    On,
}

impl FromStr for CompressionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "on" => Ok(Self::On),
            _ => Err(format!("{s:?} is not a compression mode: off or on")),
        }
    }
}

impl fmt::Display for CompressionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::On => "on",
        })
    }
}

/// [`Config::store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// The journal on disk (default).
    Disk,
    /// Memory only: nothing survives a restart.
    Memory,
}

impl FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disk" => Ok(Self::Disk),
            "memory" => Ok(Self::Memory),
            _ => Err(format!("{s:?} is not a store: disk or memory")),
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disk => "disk",
            Self::Memory => "memory",
        })
    }
}

/// [`Config::fsync`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Sync after every write.
    Always,
    /// Group commit over `fsync_window` (default).
    Batch,
    /// Never sync: the kernel's page cache only.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Self::Always),
            "batch" => Ok(Self::Batch),
            "never" => Ok(Self::Never),
            _ => Err(format!("{s:?} is not an fsync policy: always, batch or never")),
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Always => "always",
            Self::Batch => "batch",
            Self::Never => "never",
        })
    }
}

/// [`Config::data_dir`]: a directory path, `./wsgate-data` by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir(pub PathBuf);

impl Default for DataDir {
    fn default() -> Self {
        Self(PathBuf::from("./wsgate-data"))
    }
}

impl FromStr for DataDir {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("data_dir must not be empty".to_owned());
        }
        Ok(Self(PathBuf::from(s)))
    }
}

impl fmt::Display for DataDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

// ---------------------------------------------------------------------------------------
// The serve flags (clap arguments made from the table)
// ---------------------------------------------------------------------------------------

/// The serve options as given on the command line: all optional text, so that "not
/// given" is visible and the environment and file can fill the gap. [`crate::cli`]
/// flattens it into `wsgate [serve]`; [`load_serve`] turns it into a [`Config`].
///
/// Its clap arguments come from the option table, each help line extended with
/// `[default: …] [env: WSGATE_…]` from [`Config::default`] and the key, so the help
/// cannot drift from the code.
#[derive(Clone, Debug, Default)]
pub struct ServeFlags {
    /// `--config FILE`.
    config: Option<PathBuf>,
    /// The options given as flags, by key, with their values as written.
    given: Vec<(&'static str, Vec<String>)>,
}

impl ServeFlags {
    /// The values of option `key` when it was given as a flag (removed from the set).
    fn take(&mut self, key: &str) -> Option<Vec<String>> {
        let index = self.given.iter().position(|(k, _)| *k == key)?;
        Some(self.given.swap_remove(index).1)
    }
}

impl clap::Args for ServeFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let defaults = Config::default();
        let config = clap::Arg::new("config")
            .long("config")
            .value_name("FILE")
            .help("TOML file of options, keys named like the flags with underscores (max_connections = 200000)")
            .value_parser(clap::value_parser!(PathBuf))
            .action(clap::ArgAction::Set);
        cmd.arg(annotate(config, &defaults))
            .args(option_args().into_iter().map(|arg| annotate(arg, &defaults)))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for ServeFlags {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let given = KEYS
            .iter()
            .filter_map(|&key| {
                let values = matches.get_many::<String>(key)?;
                Some((key, values.cloned().collect()))
            })
            .collect();
        Ok(Self {
            config: matches.get_one::<PathBuf>("config").cloned(),
            given,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// Appends `[default: …] [env: WSGATE_…]` to an option's help.
fn annotate(arg: clap::Arg, defaults: &Config) -> clap::Arg {
    let key = arg.get_id().as_str().to_owned();
    let suffix = if key == "config" {
        format!("[env: {}]", env_name(&key))
    } else if let Some(value) = defaults.value(&key) {
        // The two defaults that are not a fixed value say what they depend on.
        let default = match (key.as_str(), value) {
            ("shards", _) => format!("CPUs available, {} here", defaults.shards),
            ("tls_listen", _) => format!("{DEFAULT_TLS_LISTEN} when --tls-cert is set"),
            (_, Value::Hidden) => String::new(),
            (_, Value::Text(s)) => s,
            (_, Value::Int(n)) => n.to_string(),
            (_, Value::Bool(b)) => b.to_string(),
            (_, Value::List(items)) if items.is_empty() => "none".to_owned(),
            (_, Value::List(items)) => items.join(","),
        };
        format!("[default: {default}] [env: {}]", env_name(&key))
    } else {
        return arg;
    };
    let extend = |help: Option<&clap::builder::StyledStr>| match help {
        Some(help) => format!("{help} {suffix}"),
        None => suffix.clone(),
    };
    let help = extend(arg.get_help());
    let long_help = arg.get_long_help().map(|h| extend(Some(h)));
    let arg = arg.help(help);
    match long_help {
        Some(long) => arg.long_help(long),
        None => arg,
    }
}

/// `max_connections` → `WSGATE_MAX_CONNECTIONS`.
fn env_name(key: &str) -> String {
    format!("WSGATE_{}", key.to_ascii_uppercase())
}

// ---------------------------------------------------------------------------------------
// Resolution: flag, then variable, then file, then default
// ---------------------------------------------------------------------------------------

/// A parsed config file.
struct ConfigFile {
    /// As given, for messages.
    path: String,
    table: toml::Table,
}

/// The sources after the flags: the environment lookup and the file, if any.
struct Sources<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file: Option<ConfigFile>,
}

impl Sources<'_> {
    /// The value of a scalar option from the first source that sets it, parsed, or
    /// `None` when no source does (the default stays).
    fn scalar<T>(
        &self,
        key: &'static str,
        flag: Option<String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let (source, text) = if let Some(text) = flag {
            (format!("--{}", key.replace('_', "-")), text)
        } else if let Some(text) = (self.env)(&env_name(key)) {
            (env_name(key), text)
        } else if let Some((file, value)) = self.file_value(key) {
            let source = format!("{key} in {}", file.path);
            match value {
                toml::Value::String(s) => (source, s.clone()),
                toml::Value::Integer(n) => (source, n.to_string()),
                toml::Value::Boolean(b) => (source, b.to_string()),
                other => {
                    return Err(ConfigError::Invalid {
                        source,
                        value: other.to_string(),
                        expected: "a string, integer or boolean".to_owned(),
                    });
                }
            }
        } else {
            return Ok(None);
        };
        match parse(&text) {
            Ok(value) => Ok(Some(value)),
            Err(expected) => Err(ConfigError::Invalid {
                source,
                value: text,
                expected,
            }),
        }
    }

    /// Overwrites `slot` (holding the default) with the value of scalar option `key` from
    /// the first source that sets it, if any does.
    fn set<T>(
        &self,
        slot: &mut T,
        key: &'static str,
        flag: Option<String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<(), ConfigError> {
        if let Some(value) = self.scalar(key, flag, parse)? {
            *slot = value;
        }
        Ok(())
    }

    /// The value of a list option from the first source that sets it. Empty items are
    /// dropped, so an empty flag or variable gives the empty list.
    fn list(&self, key: &'static str, flag: Option<Vec<String>>) -> Result<Option<Vec<String>>, ConfigError> {
        let clean = |items: Vec<String>| -> Vec<String> {
            items
                .into_iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        if let Some(items) = flag {
            return Ok(Some(clean(items)));
        }
        if let Some(text) = (self.env)(&env_name(key)) {
            return Ok(Some(clean(text.split(',').map(str::to_owned).collect())));
        }
        let Some((file, value)) = self.file_value(key) else {
            return Ok(None);
        };
        let invalid = || ConfigError::Invalid {
            source: format!("{key} in {}", file.path),
            value: value.to_string(),
            expected: "an array of strings, such as [\"/ws\"]".to_owned(),
        };
        let toml::Value::Array(array) = value else {
            return Err(invalid());
        };
        let items = array
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>();
        Ok(Some(clean(items.ok_or_else(invalid)?)))
    }

    fn file_value(&self, key: &str) -> Option<(&ConfigFile, &toml::Value)> {
        let file = self.file.as_ref()?;
        Some((file, file.table.get(key)?))
    }
}

fn read_config_file(path: &std::path::Path) -> Result<ConfigFile, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: shown.clone(),
        error: e.to_string(),
    })?;
    let table = text.parse::<toml::Table>().map_err(|e| {
        // toml's Display is a multi-line snippet; keep one line: line number + message.
        let line = e.span().map_or(0, |span| text[..span.start].matches('\n').count() + 1);
        let message = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        ConfigError::File {
            path: shown.clone(),
            error: format!("line {line}: {message}"),
        }
    })?;
    if let Some(key) = table.keys().find(|key| !KEYS.contains(&key.as_str())) {
        let normalised = key.replace('-', "_").to_ascii_lowercase();
        let suggestion = KEYS.iter().copied().find(|k| *k == normalised);
        return Err(ConfigError::UnknownKey {
            path: shown,
            key: key.clone(),
            suggestion,
        });
    }
    Ok(ConfigFile { path: shown, table })
}

/// Merges the serve flags, the environment (`env` looks a variable up) and the config
/// file they name into a checked `Config`: what `wsgate [serve]` runs with.
pub fn load_serve(flags: ServeFlags, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let config_path = flags.config.clone().or_else(|| env("WSGATE_CONFIG").map(PathBuf::from));
    let file = config_path.as_deref().map(read_config_file).transpose()?;
    let config = resolve(&Sources { env, file }, flags)?;
    config.validate()?;
    Ok(config)
}

// ---------------------------------------------------------------------------------------
// Kinds of option: how each is given, parsed, range-checked and written out
// ---------------------------------------------------------------------------------------

/// How a value of type `T` is read from the sources, checked and shown. One
/// implementation per kind of option; a row of the table names its kind.
trait Kind<T> {
    /// Overwrites `slot` (holding the default) with the value from the first source that
    /// sets `key`, if any does; `flag` is what the command line gave.
    fn merge(
        &self,
        s: &Sources<'_>,
        key: &'static str,
        flag: Option<Vec<String>>,
        slot: &mut T,
    ) -> Result<(), ConfigError>;
    /// The value as the file and `--help` write it.
    fn show(&self, value: &T) -> Value;
    /// Whether the value is within the accepted range (kinds without one: always).
    fn check(&self, _key: &'static str, _value: &T) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// How a kind of option is spelled on the command line (beyond taking one value).
trait ArgShape {
    fn shape(&self, arg: clap::Arg) -> clap::Arg {
        arg
    }
}

/// Merges a scalar option (one text value per source).
fn merge_scalar<T>(
    s: &Sources<'_>,
    key: &'static str,
    flag: Option<Vec<String>>,
    slot: &mut T,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<(), ConfigError> {
    s.set(slot, key, flag.and_then(|values| values.into_iter().last()), parse)
}

/// An integer count within the range: `Count(SHARDS_RANGE)`.
struct Count<T>(RangeInclusive<T>);

impl<T> ArgShape for Count<T> {}

impl<T> Kind<T> for Count<T>
where
    T: TryFrom<u64> + TryInto<u64> + PartialOrd + Copy + fmt::Display,
{
    fn merge(
        &self,
        s: &Sources<'_>,
        key: &'static str,
        flag: Option<Vec<String>>,
        slot: &mut T,
    ) -> Result<(), ConfigError> {
        merge_scalar(s, key, flag, slot, count(self.0.clone()))
    }
    fn show(&self, value: &T) -> Value {
        Value::Int((*value).try_into().unwrap_or(u64::MAX))
    }
    fn check(&self, key: &'static str, value: &T) -> Result<(), ConfigError> {
        count_in(key, *value, &self.0)
    }
}

/// A byte size within the range (bytes, or with a binary unit), into a `usize` or `u64`.
struct Size(RangeInclusive<u64>);

impl ArgShape for Size {}

impl<T> Kind<T> for Size
where
    T: TryFrom<u64> + TryInto<u64> + Copy,
{
    fn merge(
        &self,
        s: &Sources<'_>,
        key: &'static str,
        flag: Option<Vec<String>>,
        slot: &mut T,
    ) -> Result<(), ConfigError> {
        merge_scalar(s, key, flag, slot, size(self.0.clone()))
    }
    fn show(&self, value: &T) -> Value {
        Value::Text(format_bytes((*value).try_into().unwrap_or(u64::MAX)))
    }
    fn check(&self, key: &'static str, value: &T) -> Result<(), ConfigError> {
        bytes_in(key, (*value).try_into().unwrap_or(u64::MAX), &self.0)
    }
}

/// A duration with a unit, within the range.
struct Dur(RangeInclusive<Duration>);

impl ArgShape for Dur {}

impl Kind<Duration> for Dur {
    fn merge(
        &self,
        s: &Sources<'_>,
        key: &'static str,
        flag: Option<Vec<String>>,
        slot: &mut Duration,
    ) -> Result<(), ConfigError> {
        merge_scalar(s, key, flag, slot, duration(self.0.clone()))
    }
    fn show(&self, value: &Duration) -> Value {
        Value::Text(format_duration(*value))
    }
    fn check(&self, key: &'static str, value: &Duration) -> Result<(), ConfigError> {
        duration_in(key, *value, &self.0)
    }
}

/// `IP:PORT`; for an optional address, an empty value is none.
struct Addr;

impl ArgShape for Addr {}

impl Kind<SocketAddr> for Addr {
    fn merge(
        &self,
        s: &Sources<'_>,
        key: &'static str,
        flag: Option<Vec<String>>,
        slot: &mut SocketAddr,
    ) -> Result<(), ConfigError> {
        merge_scalar(s, key, flag, slot, parse_addr)
    }
    fn show(&self, value: &SocketAddr) -> Value {
        Value::Text(value.to_string())
    }
}

impl Kind<Option<SocketAddr>> for Addr {
    fn merge(
        &self,
        s: &Sources<'_>,
        key: &'static str,
        flag: Option<Vec<String>>,
        slot: &mut Option<SocketAddr>,
    ) -> Result<(), ConfigError> {
        merge_scalar(s, key, flag, slot, |v| {
            if v.trim().is_empty() {
                Ok(None)
            } else {
                parse_addr(v).map(Some)
            }
        })
    }
    fn show(&self, value: &Option<SocketAddr>) -> Value {
        Value::Text(value.map(|a| a.to_string()).unwrap_or_default())
    }
}

/// `true` or `false`; the flag alone means true (`--echo`, `--echo=false`).
struct Flag;

impl ArgShape for Flag {
    fn shape(&self, arg: clap::Arg) -> clap::Arg {
        arg.num_args(0..=1).require_equals(true).default_missing_value("true")
    }
}

impl Kind<bool> for Flag {
    fn merge(
        &self,
        s: &Sources<'_>,
        key: &'static str,
        flag: Option<Vec<String>>,
        slot: &mut bool,
    ) -> Result<(), ConfigError> {
        merge_scalar(s, key, flag, slot, parse_bool)
    }
    fn show(&self, value: &bool) -> Value {
        Value::Bool(*value)
    }
}

/// Free text, trimmed; empty is none.
struct Text;

impl ArgShape for Text {}

impl Kind<Option<String>> for Text {
    fn merge(
        &self,
        s: &Sources<'_>,
        key: &'static str,
        flag: Option<Vec<String>>,
        slot: &mut Option<String>,
    ) -> Result<(), ConfigError> {
        merge_scalar(s, key, flag, slot, |v| {
            let v = v.trim();
            Ok((!v.is_empty()).then(|| v.to_owned()))
        })
    }
    fn show(&self, value: &Option<String>) -> Value {
        Value::Text(value.clone().unwrap_or_default())
    }
}

/// A file name, trimmed; empty is none.
struct FilePath;

impl ArgShape for FilePath {}

impl Kind<Option<PathBuf>> for FilePath {
    fn merge(
        &self,
        s: &Sources<'_>,
        key: &'static str,
        flag: Option<Vec<String>>,
        slot: &mut Option<PathBuf>,
    ) -> Result<(), ConfigError> {
        merge_scalar(s, key, flag, slot, |v| {
            let v = v.trim();
            Ok((!v.is_empty()).then(|| PathBuf::from(v)))
        })
    }
    fn show(&self, value: &Option<PathBuf>) -> Value {
        Value::Text(value.as_ref().map(|p| p.display().to_string()).unwrap_or_default())
    }
}

/// A secret, taken byte for byte (not trimmed); empty is none. Never shown or dumped.
struct Hidden;

impl ArgShape for Hidden {}

impl Kind<Option<crate::auth::Secret>> for Hidden {
    fn merge(
        &self,
        s: &Sources<'_>,
        key: &'static str,
        flag: Option<Vec<String>>,
        slot: &mut Option<crate::auth::Secret>,
    ) -> Result<(), ConfigError> {
        merge_scalar(s, key, flag, slot, |v| {
            Ok((!v.is_empty()).then(|| crate::auth::Secret::new(v.as_bytes())))
        })
    }
    fn show(&self, _: &Option<crate::auth::Secret>) -> Value {
        Value::Hidden
    }
}

/// A word its type parses and prints itself (`jwt|none`, `newest|oldest`), trimmed.
struct Parsed;

impl ArgShape for Parsed {}

impl<T> Kind<T> for Parsed
where
    T: std::str::FromStr<Err = String> + fmt::Display,
{
    fn merge(
        &self,
        s: &Sources<'_>,
        key: &'static str,
        flag: Option<Vec<String>>,
        slot: &mut T,
    ) -> Result<(), ConfigError> {
        merge_scalar(s, key, flag, slot, |v| v.trim().parse::<T>())
    }
    fn show(&self, value: &T) -> Value {
        Value::Text(value.to_string())
    }
}

/// A list: repeated or comma-separated flags, a comma-separated variable or a TOML
/// array of strings. Items are trimmed, empty items dropped.
struct List;

impl ArgShape for List {
    fn shape(&self, arg: clap::Arg) -> clap::Arg {
        arg.value_delimiter(',').action(clap::ArgAction::Append)
    }
}

impl<T: ListItem> Kind<Vec<T>> for List {
    fn merge(
        &self,
        s: &Sources<'_>,
        key: &'static str,
        flag: Option<Vec<String>>,
        slot: &mut Vec<T>,
    ) -> Result<(), ConfigError> {
        if let Some(items) = s.list(key, flag)? {
            *slot = items
                .into_iter()
                .map(|item| T::parse_item(key, item))
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }
    fn show(&self, value: &Vec<T>) -> Value {
        Value::List(value.iter().map(ListItem::show_item).collect())
    }
}

/// An item of a [`List`] option.
trait ListItem: Sized {
    /// The item from its text; an error names the key.
    fn parse_item(key: &'static str, text: String) -> Result<Self, ConfigError>;
    fn show_item(&self) -> String;
}

impl ListItem for String {
    fn parse_item(_: &'static str, text: String) -> Result<Self, ConfigError> {
        Ok(text)
    }
    fn show_item(&self) -> String {
        self.clone()
    }
}

impl ListItem for PathBuf {
    fn parse_item(_: &'static str, text: String) -> Result<Self, ConfigError> {
        Ok(PathBuf::from(text))
    }
    fn show_item(&self) -> String {
        self.display().to_string()
    }
}

impl ListItem for crate::edge::Cidr {
    fn parse_item(key: &'static str, text: String) -> Result<Self, ConfigError> {
        text.parse().map_err(|e| relation(format!("{key}: {e}")))
    }
    fn show_item(&self) -> String {
        self.to_string()
    }
}

impl ListItem for crate::auth::Algorithm {
    fn parse_item(key: &'static str, text: String) -> Result<Self, ConfigError> {
        text.parse().map_err(|e| relation(format!("{key}: {e}")))
    }
    fn show_item(&self) -> String {
        self.name().to_owned()
    }
}

// ---------------------------------------------------------------------------------------
// Value parsers. Each returns the accepted syntax and range as its error, which
// `ConfigError::Invalid` shows after "expected".
// ---------------------------------------------------------------------------------------

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse::<SocketAddr>()
        .map_err(|_| "an IP address and port, such as 0.0.0.0:8080 or [::]:8080 (no host names)".to_owned())
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("true or false".to_owned()),
    }
}

/// A parser for counts within `range`.
fn count<T>(range: RangeInclusive<T>) -> impl Fn(&str) -> Result<T, String>
where
    T: TryFrom<u64> + PartialOrd + fmt::Display,
{
    move |s| {
        let expected = || format!("an integer from {} to {}", range.start(), range.end());
        let Some((n, "")) = split_number(s) else {
            return Err(expected());
        };
        T::try_from(n).ok().filter(|n| range.contains(n)).ok_or_else(expected)
    }
}

/// A parser for durations within `range`.
fn duration(range: RangeInclusive<Duration>) -> impl Fn(&str) -> Result<Duration, String> {
    move |s| {
        let mut expected = format!(
            "a duration from {} to {}, written like 250ms, 10s, 2m or 1h",
            format_duration(*range.start()),
            format_duration(*range.end())
        );
        match parse_duration(s) {
            Some(d) if range.contains(&d) => Ok(d),
            _ => {
                if matches!(split_number(s), Some((_, ""))) {
                    expected.push_str(" (a bare number has no unit: is it seconds or milliseconds?)");
                }
                Err(expected)
            }
        }
    }
}

/// A parser for byte sizes within `range`, into the field's integer type.
fn size<T: TryFrom<u64>>(range: RangeInclusive<u64>) -> impl Fn(&str) -> Result<T, String> {
    move |s| {
        let mut expected = format!(
            "a size from {} to {}: bytes, or a number with KiB, MiB, GiB or TiB",
            format_bytes(*range.start()),
            format_bytes(*range.end())
        );
        match parse_size(s).filter(|n| range.contains(n)).map(T::try_from) {
            Some(Ok(n)) => Ok(n),
            Some(Err(_)) => Err(format!("{expected} (too large for this platform)")),
            None => {
                if is_ambiguous_size(s) {
                    expected.push_str(" (KB and MB are ambiguous; write KiB or MiB, powers of 1024)");
                }
                Err(expected)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The tests drive the real command line (test code only: `cli` depends on `config`,
    // never the other way round).
    use crate::cli::{Command, load_from};

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// An environment holding exactly `pairs`.
    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    /// A config file that is deleted when the test ends.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &str) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("wsgate-config-test-{}-{n}.toml", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }

        fn arg(&self) -> String {
            format!("--config={}", self.0.display())
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn serve(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let argv = std::iter::once("wsgate").chain(args.iter().copied());
        load_from(argv, env).map(|command| match command {
            Command::Serve(config) => config,
            other => panic!(
                "not a serve command: {}",
                matches!(other, Command::Token(_) | Command::Bench(_))
            ),
        })
    }

    fn error(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> String {
        serve(args, env).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid_and_are_what_no_arguments_give() {
        let defaults = Config::default();
        defaults.validate().unwrap();
        assert_eq!(defaults.limits, Limits::default());
        assert_eq!(serve(&[], &no_env).unwrap(), defaults);
        assert_eq!(serve(&["serve"], &no_env).unwrap(), defaults);
    }

    #[test]
    fn connections_per_shard_rounds_up() {
        let config = Config {
            shards: 3,
            max_connections: 10,
            ..Config::default()
        };
        assert_eq!(config.connections_per_shard(), 4);
    }

    #[test]
    fn echo_works_without_the_serve_word() {
        assert!(serve(&["--echo"], &no_env).unwrap().echo);
        assert!(serve(&["serve", "--echo"], &no_env).unwrap().echo);
        assert!(serve(&["--echo=true"], &no_env).unwrap().echo);
        // The flag can also switch off what the environment switched on.
        assert!(
            !serve(&["--echo=false"], &env_of(&[("WSGATE_ECHO", "true")]))
                .unwrap()
                .echo
        );
        // The two spellings do not mix.
        assert!(matches!(serve(&["--echo", "serve"], &no_env), Err(ConfigError::Cli(_))));
    }

    #[test]
    fn each_source_sets_each_kind_of_value() {
        let flags = serve(
            &[
                "--max-connections",
                "5000",
                "--ping-interval",
                "5s",
                "--send-queue-bytes",
                "64KiB",
                "--paths",
                "/a,/b",
            ],
            &no_env,
        )
        .unwrap();
        let env = serve(
            &[],
            &env_of(&[
                ("WSGATE_MAX_CONNECTIONS", "5000"),
                ("WSGATE_PING_INTERVAL", "5s"),
                ("WSGATE_SEND_QUEUE_BYTES", "64KiB"),
                ("WSGATE_PATHS", "/a, /b"),
            ]),
        )
        .unwrap();
        let file = TempFile::new(
            "max_connections = 5000\nping_interval = \"5s\"\nsend_queue_bytes = \"64KiB\"\npaths = [\"/a\", \"/b\"]\n",
        );
        let from_file = serve(&[&file.arg()], &no_env).unwrap();
        for config in [flags, env, from_file] {
            assert_eq!(config.max_connections, 5000);
            assert_eq!(config.limits.ping_interval, Duration::from_secs(5));
            assert_eq!(config.send_queue_bytes, 64 * 1024);
            assert_eq!(config.paths, ["/a", "/b"]);
        }
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let file = TempFile::new("max_connections = 100\nshards = 1\n");
        let env = env_of(&[
            ("WSGATE_MAX_CONNECTIONS", "200"),
            ("WSGATE_CONFIG", &file.0.display().to_string()),
        ]);
        // All three: the flag wins, the environment does not override it.
        assert_eq!(serve(&["--max-connections", "300"], &env).unwrap().max_connections, 300);
        // Environment and file: the environment wins.
        assert_eq!(serve(&[], &env).unwrap().max_connections, 200);
        // File only (found through --config here).
        assert_eq!(serve(&[&file.arg()], &no_env).unwrap().max_connections, 100);
        // Nothing: the default. Keys one source leaves unset fall through to the next.
        assert_eq!(serve(&[], &no_env).unwrap().max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(serve(&["--max-connections", "300"], &env).unwrap().shards, 1);
    }

    #[test]
    fn config_flag_beats_config_variable() {
        let used = TempFile::new("max_connections = 111\n");
        let ignored = TempFile::new("max_connections = 222\n");
        let env = env_of(&[("WSGATE_CONFIG", &ignored.0.display().to_string())]);
        assert_eq!(serve(&[&used.arg()], &env).unwrap().max_connections, 111);
    }

    #[test]
    fn lists_from_flags_env_and_empty_values() {
        let config = serve(&["--paths", "/a", "--paths", "/b,/c"], &no_env).unwrap();
        assert_eq!(config.paths, ["/a", "/b", "/c"]);
        let env = env_of(&[("WSGATE_ALLOWED_ORIGINS", "https://a.example")]);
        assert_eq!(serve(&[], &env).unwrap().allowed_origins, ["https://a.example"]);
        // An empty flag is the empty list, and beats the variable.
        assert!(serve(&["--allowed-origins="], &env).unwrap().allowed_origins.is_empty());
        let config = serve(&["--subprotocols", "chat.v2,chat.v1"], &no_env).unwrap();
        assert_eq!(config.subprotocols, ["chat.v2", "chat.v1"]);
    }

    #[test]
    fn bad_values_name_their_source_and_the_accepted_range() {
        let e = error(&["--handshake-timeout", "10"], &no_env);
        assert!(
            e.contains("--handshake-timeout") && e.contains("100ms to 5m") && e.contains("bare number"),
            "{e}"
        );
        let e = error(&[], &env_of(&[("WSGATE_DRAIN_WINDOW", "10 sec")]));
        assert!(e.contains("WSGATE_DRAIN_WINDOW") && e.contains("\"10 sec\""), "{e}");
        let e = error(&["--read-buffer-bytes", "64KB"], &no_env);
        assert!(
            e.contains("--read-buffer-bytes") && e.contains("4KiB to 16MiB") && e.contains("ambiguous"),
            "{e}"
        );
        let e = error(&["--read-buffer-bytes", "1KiB"], &no_env);
        assert!(e.contains("4KiB to 16MiB"), "{e}");
        let e = error(&["--listen", "localhost:80"], &no_env);
        assert!(e.contains("--listen") && e.contains("IP address and port"), "{e}");
        let e = error(&["--shards", "0"], &no_env);
        assert_eq!(
            e,
            "invalid value \"0\" for --shards: expected an integer from 1 to 1024"
        );
        let file = TempFile::new("tick = 5\n");
        let e = error(&[&file.arg()], &no_env);
        assert!(
            e.starts_with("invalid value \"5\" for tick in ") && e.contains("10ms to 1s"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn unknown_or_mistyped_file_keys_are_errors() {
        let file = TempFile::new("max-connections = 10\n");
        let e = serve(&[&file.arg()], &no_env).unwrap_err();
        assert!(
            matches!(
                &e,
                ConfigError::UnknownKey {
                    suggestion: Some("max_connections"),
                    ..
                }
            ),
            "{e}"
        );
        let file = TempFile::new("max_conections = 10\n");
        let e = error(&[&file.arg()], &no_env);
        assert!(e.contains("unknown key \"max_conections\""), "{e}");
        let file = TempFile::new("paths = \"/ws\"\n");
        let e = error(&[&file.arg()], &no_env);
        assert!(e.contains("paths in") && e.contains("array of strings"), "{e}");
        let file = TempFile::new("shards = 2\nlisten = = 1\nmax_headers = 3\n");
        let e = error(&[&file.arg()], &no_env);
        assert!(e.contains("line 2") && !e.contains('\n'), "{e}");
        let e = error(&["--config", "/nonexistent/wsgate.toml"], &no_env);
        assert!(e.starts_with("config file /nonexistent/wsgate.toml: "), "{e}");
    }

    #[test]
    fn invalid_relations_are_errors() {
        let e = error(&["--drain-window", "20s", "--drain-timeout", "10s"], &no_env);
        assert!(
            e.contains("drain_timeout (10s) must be at least drain_window (20s)"),
            "{e}"
        );
        let e = error(&["--shards", "8", "--max-connections", "4"], &no_env);
        assert!(e.contains("max_connections (4) must be at least shards (8)"), "{e}");
        let e = error(
            &["--send-queue-bytes", "1MiB", "--shard-send-budget-bytes", "64KiB"],
            &no_env,
        );
        assert!(e.contains("shard_send_budget_bytes"), "{e}");
        let e = error(&["--ping-interval", "1m", "--idle-timeout", "1m"], &no_env);
        assert!(e.contains("idle_timeout must be longer than ping_interval"), "{e}");
        let e = error(&["--tick", "1s", "--close-timeout", "500ms"], &no_env);
        assert!(e.contains("close_timeout (500ms) must be at least tick (1s)"), "{e}");
        let e = error(
            &["--listen", "0.0.0.0:9000", "--admin-listen", "127.0.0.1:9000"],
            &no_env,
        );
        assert!(e.contains("same port"), "{e}");
        let e = error(&["--max-payload-bytes", "1MiB"], &no_env);
        assert!(
            e.contains("max_payload_bytes (1MiB) must be below max_message_bytes (1MiB)"),
            "{e}"
        );
        let e = error(&["--mesh-ring-depth", "1"], &no_env);
        assert!(e.contains("--mesh-ring-depth") && e.contains("2 to 1048576"), "{e}");
        let e = error(&[], &env_of(&[("WSGATE_HISTORY_MAX_AGE", "30")]));
        assert!(e.contains("WSGATE_HISTORY_MAX_AGE") && e.contains("bare number"), "{e}");
        assert_eq!(
            serve(
                &["--offline-max-messages", "5", "--mesh-ring-full-wait", "1ms"],
                &no_env
            )
            .unwrap()
            .msg,
            MsgLimits {
                offline_max_messages: 5,
                ring_full_wait: Duration::from_millis(1),
                ..MsgLimits::default()
            }
        );
        assert!(error(&["--paths", "ws"], &no_env).contains("must start with '/'"));
        assert!(error(&["--paths", "/ws,/ws"], &no_env).contains("twice"));
        assert!(error(&["--allowed-origins", "*"], &no_env).contains("leave allowed_origins empty"));
        assert!(error(&["--allowed-origins", "https://a.example/"], &no_env).contains("no path"));
        assert!(error(&["--subprotocols", "chat v1"], &no_env).contains("HTTP token"));
        // A Config built in code is held to the same ranges.
        let config = Config {
            tick: Duration::from_millis(1),
            ..Config::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "invalid configuration: tick = 1ms is out of range: accepted 10ms to 1s"
        );
    }

    #[test]
    fn help_and_version_exit_0_usage_errors_exit_2() {
        let help = load_from(["wsgate", "--help"], &no_env).unwrap_err();
        assert!(help.is_help_or_version());
        assert_eq!(help.exit_code(), 0);
        // Collapse clap's wrapping so phrases can be matched across line breaks.
        let flat = |text: String| text.split_whitespace().collect::<Vec<_>>().join(" ");
        let text = flat(help.to_string());
        for needle in [
            "--max-connections",
            "WSGATE_MAX_CONNECTIONS",
            "[default: 1000000]",
            "[default: 256KiB]",
            "[env: WSGATE_CONFIG]",
            "serve",
        ] {
            assert!(text.contains(needle), "help lacks {needle}:\n{text}");
        }
        let serve_help = flat(
            load_from(["wsgate", "serve", "--help"], &no_env)
                .unwrap_err()
                .to_string(),
        );
        assert!(
            serve_help.contains("[default: 10s] [env: WSGATE_HANDSHAKE_TIMEOUT]"),
            "{serve_help}"
        );
        let version = load_from(["wsgate", "--version"], &no_env).unwrap_err();
        assert!(version.is_help_or_version() && version.exit_code() == 0);
        let usage = load_from(["wsgate", "--no-such-flag"], &no_env).unwrap_err();
        assert!(!usage.is_help_or_version());
        assert_eq!(usage.exit_code(), 2);
        assert_eq!(ConfigError::Relation(String::new()).exit_code(), 2);
    }

    #[test]
    fn every_key_has_a_flag_and_round_trips_through_a_file() {
        let command = crate::cli::command();
        for key in KEYS {
            let long = key.replace('_', "-");
            assert!(
                command.get_arguments().any(|a| a.get_long() == Some(long.as_str())),
                "no --{long}"
            );
        }
        let config = Config {
            listen: "[::1]:7000".parse().unwrap(),
            shards: 3,
            max_connections: 30_000,
            handshake_timeout: Duration::from_millis(2500),
            send_queue_bytes: 100_000,
            drain_window: Duration::ZERO,
            echo: true,
            limits: Limits {
                max_frame_bytes: 4096,
                idle_timeout: Duration::from_secs(90),
                ..Limits::default()
            },
            paths: vec!["/a".into(), "/b".into()],
            allowed_origins: vec!["https://a.example:8443".into()],
            subprotocols: vec!["chat".into()],
            tick: Duration::from_millis(50),
            tls_cert: Some("/etc/wsgate/chain.pem".into()),
            tls_key: Some("/etc/wsgate/key.pem".into()),
            tls_listen: Some("[::1]:7443".parse().unwrap()),
            tls_tickets: false,
            msg: MsgLimits {
                history_max_messages: 10,
                history_max_bytes: 3000,
                offline_max_age: Duration::from_secs(7200),
                max_payload_bytes: 1000,
                ring_depth: 64,
                ring_full_wait: Duration::from_millis(2),
                ..MsgLimits::default()
            },
            ..Config::default()
        };
        config.validate().unwrap();
        let file = TempFile::new(&config.to_toml());
        assert_eq!(serve(&[&file.arg()], &no_env).unwrap(), config);
    }

    #[test]
    fn api_key_from_flag_env_or_file_checked_and_never_written_out() {
        let off = serve(&[], &no_env).unwrap();
        assert_eq!(off.load_api_key().unwrap(), None);
        let key = "k3y-of-sixteen-bytes";
        let flag = serve(&["--api-key", key], &no_env).unwrap();
        assert_eq!(flag.load_api_key().unwrap().unwrap().expose(), key.as_bytes());
        assert!(!flag.to_toml().contains(key), "the key is never dumped");
        assert!(!format!("{flag:?}").contains(key), "nor debug-printed");
        let env = env_of(&[("WSGATE_API_KEY", key)]);
        assert!(serve(&[], &env).unwrap().api_key.is_some());
        let short = serve(&["--api-key", "short"], &no_env).unwrap_err().to_string();
        assert!(
            short.contains("at least 16 bytes") && !short.contains("short\""),
            "{short}"
        );
        assert!(serve(&["--api-key", "has a space in it!!"], &no_env).is_err());
        // Visible ASCII but not a token68: no Authorization header could carry it.
        for not_token68 in [
            "comma,is-not-allowed!",
            "quoted\"key-of-16-bytes",
            "=leading-padding-1234",
        ] {
            let message = error(&["--api-key", not_token68], &no_env);
            assert!(message.contains("token68"), "{not_token68}: {message}");
        }
        assert!(serve(&["--api-key", "base64+/key-with-pad=="], &no_env).is_ok());

        let file = TempFile::new(&format!("{key}\n"));
        let path = file.0.display().to_string();
        let from_file = serve(&["--api-key-file", &path], &no_env).unwrap();
        assert_eq!(from_file.load_api_key().unwrap().unwrap().expose(), key.as_bytes());
        assert!(from_file.to_toml().contains(&format!("api_key_file = \"{path}\"")));
        let both = serve(&["--api-key-file", &path, "--api-key", key], &no_env).unwrap_err();
        assert!(both.to_string().contains("both set"), "{both}");
        let bad = TempFile::new("tiny\n");
        let bad_path = bad.0.display().to_string();
        let err = serve(&["--api-key-file", &bad_path], &no_env)
            .unwrap()
            .load_api_key()
            .unwrap_err()
            .to_string();
        assert!(err.contains(&bad_path) && !err.contains("tiny\""), "{err}");
        let missing = serve(&["--api-key-file", "/nonexistent/wsgate-key"], &no_env).unwrap();
        assert!(missing.load_api_key().is_err());
    }

    #[test]
    fn log_options_from_each_source_checked_with_a_clear_error() {
        use crate::logging::{LogFilter, LogFormat};
        let defaults = serve(&[], &no_env).unwrap();
        assert_eq!(
            (defaults.log_level.to_string(), defaults.log_format),
            ("info".to_owned(), LogFormat::Text)
        );
        let flags = serve(&["--log-level", "debug", "--log-format", "json"], &no_env).unwrap();
        assert_eq!(flags.log_level, "debug".parse::<LogFilter>().unwrap());
        assert_eq!(flags.log_format, LogFormat::Json);
        let env = env_of(&[
            ("WSGATE_LOG_LEVEL", "wsgate::server=trace,warn"),
            ("WSGATE_LOG_FORMAT", "json"),
        ]);
        let from_env = serve(&[], &env).unwrap();
        assert_eq!(from_env.log_level.to_string(), "wsgate::server=trace,warn");
        assert_eq!(from_env.log_format, LogFormat::Json);
        let file = TempFile::new("log_level = \"error\"\nlog_format = \"json\"\n");
        let from_file = serve(&[&file.arg()], &no_env).unwrap();
        assert_eq!(
            (from_file.log_level.to_string(), from_file.log_format),
            ("error".to_owned(), LogFormat::Json)
        );
        // Written out and read back like every option.
        let round = TempFile::new(&from_env.to_toml());
        assert_eq!(serve(&[&round.arg()], &no_env).unwrap(), from_env);
        let e = error(&["--log-level", "verbose"], &no_env);
        assert!(
            e.contains("--log-level") && e.contains("error, warn, info, debug, trace"),
            "{e}"
        );
        let e = error(&[], &env_of(&[("WSGATE_LOG_FORMAT", "yaml")]));
        assert!(e.contains("WSGATE_LOG_FORMAT") && e.contains("text or json"), "{e}");
    }

    #[test]
    fn tls_options_go_together_and_default_the_listener() {
        let on = serve(&["--tls-cert", "c.pem", "--tls-key", "k.pem"], &no_env).unwrap();
        assert_eq!(on.tls_listen_addr(), Some(DEFAULT_TLS_LISTEN));
        assert!(on.tls_files().is_some_and(|f| f.tickets));
        let env = env_of(&[("WSGATE_TLS_LISTEN", "127.0.0.1:9443"), ("WSGATE_TLS_TICKETS", "false")]);
        let on = serve(&["--tls-cert", "c.pem", "--tls-key", "k.pem"], &env).unwrap();
        assert_eq!(on.tls_listen_addr(), Some("127.0.0.1:9443".parse().unwrap()));
        assert!(on.tls_files().is_some_and(|f| !f.tickets));
        let off = serve(&[], &no_env).unwrap();
        assert_eq!((off.tls_files(), off.tls_listen_addr()), (None, None));
        for (args, needle) in [
            (&["--tls-cert", "c.pem"][..], "go together"),
            (&["--tls-listen", "0.0.0.0:8443"][..], "needs tls_cert"),
            (
                &["--tls-cert", "c", "--tls-key", "k", "--tls-listen", "0.0.0.0:8080"][..],
                "same port",
            ),
            (
                &["--tls-cert", "c", "--tls-key", "k", "--read-buffer-bytes", "16KiB"][..],
                "whole TLS record",
            ),
        ] {
            let message = error(args, &no_env);
            assert!(message.contains(needle), "{args:?}: {message}");
        }
    }

    #[test]
    fn value_syntax() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 2m "), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("200us"), Some(Duration::from_micros(200)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_size("64KiB"), Some(65_536));
        assert_eq!(parse_size("1 mib"), Some(1 << 20));
        assert_eq!(parse_size("1_000_000"), Some(1_000_000));
        assert_eq!(parse_size("1__0"), None);
        assert_eq!(parse_size("64KB"), None);
        assert_eq!(parse_size("99999999999999999999"), None);
        assert_eq!(parse_size("18446744073709551615TiB"), None);
        assert_eq!(count(1..=10usize)("1_0"), Ok(10));
        assert!(count(1..=10usize)("11").is_err());
        for d in [
            Duration::ZERO,
            Duration::from_millis(1500),
            Duration::from_micros(250),
            Duration::from_micros(1_000_001),
            Duration::from_secs(90),
            Duration::from_secs(7200),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }
        for n in [0, 1000, 4096, 3 << 20, 5 << 30, 1 << 40] {
            assert_eq!(parse_size(&format_bytes(n)), Some(n));
        }
        assert_eq!(format_bytes(256 * 1024), "256KiB");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
    }
}
