//! `redis://` and `rediss://` URLs, and passwords kept in files.
//!
//! ```text
//! redis://[[user][:password]@]host[:port][/db]      rediss:// is the same over TLS
//! redis://:s3cr%40t@10.0.0.7:6380/2                 password "s3cr@t", db 2
//! redis://gateway:pw@[::1]                          user "gateway", port 6379, db 0
//! ```
//!
//! The user and password are percent-decoded; the host is a name, an IPv4 address or a
//! bracketed IPv6 address; the port defaults to 6379 and the db to 0. Query parameters
//! are refused (none is supported, and silently ignoring one would hide a typo). The
//! password lives in a [`Secret`]: neither `Debug` nor `Display` of a [`RedisUrl`]
//! shows it. [`read_password_file`] reads one from a file (`--redis-password-file` in a
//! later session), so it need not sit in a command line or an environment.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use crate::auth::Secret;

/// The port Redis listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 6379;

/// Largest password file read (a password is far shorter; a larger file is a mistake).
pub const MAX_PASSWORD_FILE_BYTES: u64 = 4096;

/// A parsed Redis URL. `Debug` is derived: the password is a [`Secret`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisUrl {
    /// `rediss://`: TLS to Redis.
    pub tls: bool,
    /// The ACL user (`AUTH user password`); `None` is Redis's `default` user.
    pub user: Option<String>,
    /// The password, if any.
    pub password: Option<Secret>,
    /// Host name or address, IPv6 without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database number (`SELECT`).
    pub db: u32,
}

/// Why a URL was refused. None of them carries the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlError {
    /// Not `redis://` or `rediss://`.
    Scheme,
    /// No host, or a malformed one (an unclosed `[`).
    Host,
    /// The port is not a number from 1 to 65535.
    Port,
    /// The path is not `/` followed by a database number.
    Db,
    /// A `%` not followed by two hex digits, or a user that is not UTF-8.
    Escape,
    /// A `?query` or `#fragment`.
    Query,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlError::Scheme => "a Redis URL starts with redis:// or rediss://",
            UrlError::Host => "the Redis URL has no valid host",
            UrlError::Port => "the Redis URL's port is not a number from 1 to 65535",
            UrlError::Db => "the Redis URL's path must be /<database number>",
            UrlError::Escape => "the Redis URL has a bad %-escape (or a user that is not UTF-8)",
            UrlError::Query => "the Redis URL has a ?query or #fragment: none is supported",
        })
    }
}

impl std::error::Error for UrlError {}

impl RedisUrl {
    /// Parses `redis://...` or `rediss://...`.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let (tls, rest) = if let Some(rest) = text.strip_prefix("redis://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("rediss://") {
            (true, rest)
        } else {
            return Err(UrlError::Scheme);
        };
        if rest.contains(['?', '#']) {
            return Err(UrlError::Query);
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        // The last '@' ends the credentials: an unescaped '@' in a password still parses.
        let (credentials, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (mut user, mut password) = (None, None);
        if let Some(credentials) = credentials {
            let (u, p) = match credentials.find(':') {
                Some(i) => (&credentials[..i], Some(&credentials[i + 1..])),
                None => (credentials, None),
            };
            if !u.is_empty() {
                let u = String::from_utf8(percent_decode(u)?).map_err(|_| UrlError::Escape)?;
                user = Some(u);
            }
            if let Some(p) = p.filter(|p| !p.is_empty()) {
                password = Some(Secret::new(percent_decode(p)?));
            }
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let end = v6.find(']').ok_or(UrlError::Host)?;
            let after = &v6[end + 1..];
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or(UrlError::Host)?),
            };
            (&v6[..end], port)
        } else {
            match hostport.rfind(':') {
                Some(i) => (&hostport[..i], Some(&hostport[i + 1..])),
                None => (hostport, None),
            }
        };
        let bracketed = hostport.starts_with('[');
        if host.is_empty() || host.contains(['[', ']', '@']) || (!bracketed && host.contains(':')) {
            return Err(UrlError::Host);
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(UrlError::Port),
            },
            Some(_) => return Err(UrlError::Port),
        };
        let db = match path {
            "" | "/" => 0,
            _ => {
                let digits = &path[1..];
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(UrlError::Db);
                }
                digits.parse().map_err(|_| UrlError::Db)?
            }
        };
        Ok(Self {
            tls,
            user,
            password,
            host: host.to_owned(),
            port,
            db,
        })
    }

    /// The addresses the host resolves to. A name is looked up with the system resolver,
    /// which blocks: call this at start-up, off the shards, and hand the addresses to the
    /// connection.
    pub fn socket_addrs(&self) -> std::io::Result<Vec<SocketAddr>> {
        Ok((self.host.as_str(), self.port).to_socket_addrs()?.collect())
    }
}

/// The URL with the password shown as `<redacted>` (the user is shown).
impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.tls { "rediss://" } else { "redis://" })?;
        if self.user.is_some() || self.password.is_some() {
            if let Some(user) = &self.user {
                f.write_str(user)?;
            }
            if self.password.is_some() {
                f.write_str(":<redacted>")?;
            }
            f.write_str("@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        write!(f, ":{}/{}", self.port, self.db)
    }
}

/// Why a password file could not be used. Never carries the file's contents.
#[derive(Debug)]
pub enum PasswordFileError {
    /// The file could not be read.
    Io(std::io::Error),
    /// The file is larger than [`MAX_PASSWORD_FILE_BYTES`].
    TooLarge,
    /// The file is empty (after its final line ending).
    Empty,
}

impl fmt::Display for PasswordFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordFileError::Io(e) => write!(f, "cannot read the Redis password file: {e}"),
            PasswordFileError::TooLarge => {
                write!(f, "the Redis password file is over {MAX_PASSWORD_FILE_BYTES} bytes")
            }
            PasswordFileError::Empty => f.write_str("the Redis password file is empty"),
        }
    }
}

impl std::error::Error for PasswordFileError {}

/// Reads a password from a file: its bytes, less one final `\n` or `\r\n` (what an
/// editor or `echo` leaves). Anything else is kept as is, spaces included.
pub fn read_password_file(path: &Path) -> Result<Secret, PasswordFileError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(PasswordFileError::Io)?;
    let mut bytes = Vec::new();
    file.take(MAX_PASSWORD_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(PasswordFileError::Io)?;
    if bytes.len() as u64 > MAX_PASSWORD_FILE_BYTES {
        return Err(PasswordFileError::TooLarge);
    }
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(PasswordFileError::Empty);
    }
    Ok(Secret::new(bytes))
}

fn percent_decode(text: &str) -> Result<Vec<u8>, UrlError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(UrlError::Escape);
            };
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> RedisUrl {
        RedisUrl::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn plain_urls_get_the_defaults() {
        let u = url("redis://127.0.0.1");
        assert_eq!(
            u,
            RedisUrl {
                tls: false,
                user: None,
                password: None,
                host: "127.0.0.1".into(),
                port: 6379,
                db: 0
            }
        );
        assert_eq!(url("redis://cache.internal/").host, "cache.internal");
        let u = url("rediss://cache.internal:6380/7");
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port, u.db), ("cache.internal", 6380, 7));
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let u = url("redis://gate%2Dway:p%40ss%3Aw%25rd@10.0.0.7:6380/2");
        assert_eq!(u.user.as_deref(), Some("gate-way"));
        assert_eq!(u.password.as_ref().unwrap().expose(), b"p@ss:w%rd");
        assert_eq!((u.host.as_str(), u.port, u.db), ("10.0.0.7", 6380, 2));
        // Password only (the default user); an unescaped '@' in it still parses.
        let u = url("redis://:a@b@h");
        assert_eq!((u.user, u.password.unwrap().expose()), (None, &b"a@b"[..]));
        // User only.
        let u = url("redis://reader@h");
        assert_eq!((u.user.as_deref(), u.password), (Some("reader"), None));
        // Bytes that are not UTF-8 are fine in a password.
        assert_eq!(url("redis://:%ff%00@h").password.unwrap().expose(), [0xff, 0]);
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let u = url("redis://u:p@[::1]:7000/1");
        assert_eq!((u.host.as_str(), u.port, u.db), ("::1", 7000, 1));
        assert_eq!(url("redis://[fe80::1]").port, 6379);
        assert_eq!(u.socket_addrs().unwrap(), ["[::1]:7000".parse().unwrap()]);
    }

    #[test]
    fn bad_urls_are_refused() {
        for (text, want) in [
            ("http://h", UrlError::Scheme),
            ("redis:/h", UrlError::Scheme),
            ("redis://", UrlError::Host),
            ("redis://:pw@", UrlError::Host),
            ("redis://:6379", UrlError::Host),
            ("redis://[::1", UrlError::Host),
            ("redis://[::1]x", UrlError::Host),
            ("redis://h:0", UrlError::Port),
            ("redis://h:65536", UrlError::Port),
            ("redis://h:", UrlError::Port),
            ("redis://h:+80", UrlError::Port),
            ("redis://h/x", UrlError::Db),
            ("redis://h/1/2", UrlError::Db),
            ("redis://h/-1", UrlError::Db),
            ("redis://h/99999999999", UrlError::Db),
            ("redis://:p%4@h", UrlError::Escape),
            ("redis://%ff@h", UrlError::Escape),
            ("redis://h/0?timeout=1", UrlError::Query),
            ("redis://h#x", UrlError::Query),
        ] {
            assert_eq!(RedisUrl::parse(text), Err(want), "{text}");
        }
    }

    #[test]
    fn the_password_never_shows() {
        let u = url("redis://gateway:hunter2%21@h:1/3");
        let debug = format!("{u:?}");
        let display = u.to_string();
        assert!(
            !debug.contains("hunter2") && !display.contains("hunter2"),
            "{debug} {display}"
        );
        assert!(debug.contains("redacted"), "{debug}");
        assert_eq!(display, "redis://gateway:<redacted>@h:1/3");
        assert_eq!(url("redis://[::1]").to_string(), "redis://[::1]:6379/0");
        // Errors carry no part of the URL.
        let e = RedisUrl::parse("redis://:hunter2@h:99999").unwrap_err();
        assert!(!format!("{e:?} {e}").contains("hunter2"));
    }

    #[test]
    fn password_files_lose_one_final_line_ending() {
        let dir = std::env::temp_dir().join(format!("wsgate-redis-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        assert_eq!(read_password_file(&file("a", b"s3cret\n")).unwrap().expose(), b"s3cret");
        assert_eq!(
            read_password_file(&file("b", b"s3cret\r\n")).unwrap().expose(),
            b"s3cret"
        );
        assert_eq!(
            read_password_file(&file("c", b" two words \n\n")).unwrap().expose(),
            b" two words \n"
        );
        assert!(matches!(
            read_password_file(&file("d", b"\n")),
            Err(PasswordFileError::Empty)
        ));
        assert!(matches!(
            read_password_file(&file("e", &vec![b'x'; 5000])),
            Err(PasswordFileError::TooLarge)
        ));
        assert!(matches!(
            read_password_file(&dir.join("missing")),
            Err(PasswordFileError::Io(_))
        ));
        let e = read_password_file(&file("f", b"hunter2\n"))
            .map(|s| format!("{s:?}"))
            .unwrap();
        assert!(!e.contains("hunter2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
