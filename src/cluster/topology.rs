//! Which Redis a key lives on: one server, or a Redis Cluster's masters and the slot
//! map (`CLUSTER SLOTS`), learnt once at start.
//!
//! A key's slot is CRC16 (XMODEM) of its hash tag (the part between the first `{` and
//! the next `}`, if not empty) or of the whole key, modulo 16384, as Redis Cluster
//! computes it. The gateway's keys carry a tag per user and per room
//! (`wsg:{u:alice}:h`), so every function call touches one slot.
//!
//! Discovery is blocking (plain `std::net`), run before the shards start. A layout that
//! changes while the gateway runs (resharding, failover to a replica) shows as `MOVED`
//! or `ASK` error replies: those requests are answered `unavailable` and logged; the
//! new layout is learnt at the next start (live re-discovery is not built).

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::sync::Arc;
use std::time::Duration;

use super::conn::ConnConfig;
use super::resp::{self, Value};

/// Slots of a Redis Cluster.
pub const SLOTS: usize = 16384;

/// The Redis servers a shard talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// One server, or the cluster's masters (connection `i` of every shard goes to
    /// `masters[i]`).
    pub masters: Vec<SocketAddr>,
    /// With a cluster: the master index of every slot.
    pub slots: Option<Arc<[u16]>>,
}

impl Topology {
    /// One server.
    pub fn single(addr: SocketAddr) -> Self {
        Self {
            masters: vec![addr],
            slots: None,
        }
    }

    /// The connection (master index) for `key`.
    pub fn route(&self, key: &[u8]) -> usize {
        match &self.slots {
            None => 0,
            Some(slots) => usize::from(slots[usize::from(slot(key))]),
        }
    }
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial 0, as Redis Cluster uses.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The cluster slot of `key`.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS as u16
}

/// Asks the first reachable address of `config` for the cluster layout; a server
/// without cluster support is a single server.
pub fn discover(config: &ConnConfig) -> io::Result<Topology> {
    let mut last = io::Error::other("no Redis address");
    for addr in &config.addrs {
        match ask(*addr, config) {
            Ok(topology) => return Ok(topology),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn ask(addr: SocketAddr, config: &ConnConfig) -> io::Result<Topology> {
    let timeout = config.connect_timeout.max(Duration::from_millis(100));
    let tcp = TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(config.command_timeout))?;
    tcp.set_write_timeout(Some(config.command_timeout))?;
    let stream: Box<dyn ReadWrite> = match &config.tls {
        None => Box::new(tcp),
        Some(tls) => {
            let client = rustls::ClientConnection::new(tls.config.clone(), tls.name.clone())
                .map_err(|e| io::Error::other(format!("redis TLS: {e}")))?;
            Box::new(rustls::StreamOwned::new(client, tcp))
        }
    };
    let mut conn = Blocking {
        stream,
        buf: Vec::new(),
        limits: config.limits,
    };
    if let Some(password) = &config.password {
        let reply = match &config.user {
            Some(user) => conn.call(&[b"AUTH".as_slice(), user.as_bytes(), password.expose()])?,
            None => conn.call(&[b"AUTH".as_slice(), password.expose()])?,
        };
        if let Some(e) = reply.as_error() {
            return Err(io::Error::other(format!("redis AUTH: {}", String::from_utf8_lossy(e))));
        }
    }
    let reply = conn.call(&[b"CLUSTER".as_slice(), b"SLOTS"])?;
    if let Some(e) = reply.as_error() {
        let text = String::from_utf8_lossy(e);
        if text.contains("cluster support disabled") {
            return Ok(Topology::single(addr));
        }
        return Err(io::Error::other(format!("redis CLUSTER SLOTS: {text}")));
    }
    parse_slots(&reply, addr)
}

/// The layout from a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ...],
/// replicas...], ...]`. An empty host means the address we asked.
fn parse_slots(reply: &Value, asked: SocketAddr) -> io::Result<Topology> {
    let bad = |what: &str| io::Error::other(format!("redis CLUSTER SLOTS: {what}"));
    let ranges = reply.as_items().ok_or_else(|| bad("not a list"))?;
    let mut masters: Vec<SocketAddr> = Vec::new();
    let mut slots = vec![u16::MAX; SLOTS];
    for range in ranges {
        let items = range.as_items().ok_or_else(|| bad("a range is not a list"))?;
        let (Some(start), Some(end), Some(master)) = (
            items.first().and_then(Value::as_integer),
            items.get(1).and_then(Value::as_integer),
            items.get(2).and_then(Value::as_items),
        ) else {
            return Err(bad("a range without start, end and master"));
        };
        let host = master.first().and_then(Value::as_bytes).ok_or_else(|| bad("no host"))?;
        let port = master
            .get(1)
            .and_then(Value::as_integer)
            .ok_or_else(|| bad("no port"))?;
        let host = std::str::from_utf8(host).map_err(|_| bad("host is not UTF-8"))?;
        let port = u16::try_from(port).map_err(|_| bad("port out of range"))?;
        let addr = if host.is_empty() || host == "?" {
            SocketAddr::new(asked.ip(), port)
        } else {
            (host, port)
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| bad("a host that resolves to nothing"))?
        };
        let index = match masters.iter().position(|m| *m == addr) {
            Some(i) => i,
            None => {
                masters.push(addr);
                masters.len() - 1
            }
        };
        let (start, end) = (
            usize::try_from(start).unwrap_or(SLOTS),
            usize::try_from(end).unwrap_or(SLOTS),
        );
        if start > end || end >= SLOTS {
            return Err(bad("a slot range out of bounds"));
        }
        for s in &mut slots[start..=end] {
            *s = index as u16;
        }
    }
    if let Some(missing) = slots.iter().position(|&s| s == u16::MAX) {
        return Err(bad(&format!("slot {missing} has no master (is the cluster complete?)")));
    }
    Ok(Topology {
        masters,
        slots: Some(slots.into()),
    })
}

/// A blocking socket, plain or TLS.
trait ReadWrite: io::Read + io::Write {}

impl<T: io::Read + io::Write> ReadWrite for T {}

/// A blocking RESP2 exchange for discovery.
struct Blocking {
    stream: Box<dyn ReadWrite>,
    buf: Vec<u8>,
    limits: resp::Limits,
}

impl Blocking {
    fn call(&mut self, args: &[&[u8]]) -> io::Result<Value> {
        let mut out = Vec::new();
        resp::encode_command(&mut out, args);
        self.stream.write_all(&out)?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match resp::decode(&self.buf, &self.limits) {
                Ok(Some((value, used))) => {
                    self.buf.drain(..used);
                    return Ok(value);
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::other(format!("redis: {e}"))),
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "redis closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // The reference value of the CRC16 Redis uses, and slots Redis itself reports
        // (`CLUSTER KEYSLOT`).
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(
            slot(b"foo{}{bar}"),
            slot(b"foo{}{bar}"),
            "an empty tag hashes the whole key"
        );
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"wsg:{u:alice}:h"), slot(b"wsg:{u:alice}:c"));
    }

    #[test]
    fn a_cluster_slots_reply_becomes_a_route_per_slot() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::Bulk(b"127.0.0.1".to_vec()),
                Value::Integer(port),
                Value::Bulk(b"id".to_vec()),
            ])
        };
        let range = |a: i64, b: i64, port: i64| Value::Array(vec![Value::Integer(a), Value::Integer(b), node(port)]);
        let asked: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let reply = Value::Array(vec![
            range(0, 5460, 7000),
            range(5461, 10922, 7001),
            range(10923, 16383, 7002),
        ]);
        let t = parse_slots(&reply, asked).unwrap();
        assert_eq!(t.masters.len(), 3);
        assert_eq!(t.route(b"bar"), 0, "slot 5061");
        assert_eq!(t.route(b"foo"), 2, "slot 12182");
        let gap = Value::Array(vec![range(0, 5460, 7000)]);
        assert!(parse_slots(&gap, asked).is_err(), "an incomplete cluster is refused");
        assert_eq!(Topology::single(asked).route(b"foo"), 0);
    }
}
