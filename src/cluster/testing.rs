//! Test harness: a real `redis-server` of our own on a free loopback port.
//!
//! [`RedisServer::start`] runs `redis-server --port N --bind 127.0.0.1 --save ''
//! --appendonly no` (plus any extra arguments) in a fresh directory, waits until it
//! answers `PING`, and kills it by PID when dropped. It can be killed and restarted on
//! the same port, or paused (SIGSTOP) and resumed (SIGCONT), to test faults. Without
//! `redis-server` on the PATH the tests fail and say how to install it; they never skip.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process, killed by PID on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free loopback port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra arguments (`--requirepass x`, ...).
    pub fn start_with(extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut last = String::new();
        // A port found free can be taken before the server binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("wsgate-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir for redis-server");
            let mut server = RedisServer {
                child: None,
                port,
                dir,
                extra: extra.clone(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("could not start redis-server: {last}");
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The running child's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    /// SIGKILL and reap (no-op if it is not running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        // The port can linger for a moment after the kill; retry until it binds.
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("could not restart redis-server: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// SIGSTOP: the server stops answering, its sockets stay open (a pause, a partition).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) on our own child's PID, which we have not reaped (the Child is
        // held), so the PID cannot have been reused by another process.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut args = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
        ];
        args.extend(self.extra.iter().map(String::as_str));
        let child = Command::new("redis-server")
            .args(&args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed: these tests need a real Redis. Install it with \
                 `apt-get install -y redis-server` (scripts/test.sh does this when run as root)"
            ),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("redis-server exited at start ({status}) on port {}", self.port));
            }
            if ping(self.addr()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "redis-server did not answer PING on port {} within {START_TIMEOUT:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a paused (SIGSTOPped) server too.
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `PING` with a plain blocking socket: true once the server answers, `+PONG` or (with
/// `--requirepass`) `-NOAUTH`.
pub fn ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") && line.len() < 256 {
        match s.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => return false,
        }
    }
    line == b"+PONG\r\n" || line.starts_with(b"-NOAUTH")
}

/// A loopback port free now (for a second listener of a test server).
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    l.local_addr().unwrap().port()
}

/// One command over a fresh blocking connection (RESP2), its decoded reply: what a test
/// uses to look at the keys the gateway wrote.
pub fn command(addr: SocketAddr, args: &[&str]) -> super::Value {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to redis-server");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    super::resp::encode_command(&mut out, args);
    s.write_all(&out).expect("write to redis-server");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((value, _)) = super::resp::decode(&buf, &super::Limits::default()).expect("RESP") {
            return value;
        }
        let n = s.read(&mut chunk).expect("read from redis-server");
        assert!(n > 0, "redis-server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A Redis Cluster of `masters` servers on loopback (no replicas), every slot
/// assigned, killed with its servers.
pub struct RedisCluster {
    /// The masters.
    pub servers: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the servers with cluster mode on, joins them with `redis-cli --cluster
    /// create` and waits until every one reports `cluster_state:ok`.
    pub fn start(masters: usize) -> Self {
        let servers: Vec<RedisServer> = (0..masters)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ])
            })
            .collect();
        let addrs: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli (Debian's redis-tools, installed with redis-server)");
        assert!(status.success(), "redis-cli --cluster create failed: {status}");
        let deadline = Instant::now() + START_TIMEOUT;
        for server in &servers {
            loop {
                let info = command(server.addr(), &["CLUSTER", "INFO"]);
                let text = info.as_bytes().map(String::from_utf8_lossy).unwrap_or_default();
                if text.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not come up: {text}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Self { servers }
    }
}
