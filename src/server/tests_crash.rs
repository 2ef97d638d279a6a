//! Crash tests: the gateway runs as a real child process on a disk store, clients send
//! continuously, and the child is killed (SIGKILL at random moments, several rounds; then
//! SIGTERM) and restarted on the same data directory. Every message acked before a kill
//! must be delivered afterwards, in order, once per seq, with the epoch unchanged.
//!
//! The child is this test binary run again with [`crash_child`] selected: it calls
//! [`crate::serve::run`], the function the `wsgate` binary's `main` calls, so the code
//! killed here is the code operators run (signals, drain, journal writer and recovery).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::tests::{Client, OwnedEvent, UPGRADE};

/// The variable that carries the child's command line (arguments split by `\x1f`).
const CHILD_ARGS: &str = "WSGATE_CRASH_CHILD_ARGS";
/// Users that send, and users that receive (offline while the senders run).
const SENDERS: usize = 3;
const RECIPIENTS: usize = 4;

/// Not a test on its own: the gateway process the tests below start and kill. Without
/// its variable (plain `cargo test -- --ignored`) it returns at once.
#[test]
#[ignore = "the gateway child process of the crash tests"]
fn crash_child() {
    let Ok(args) = std::env::var(CHILD_ARGS) else {
        return;
    };
    let args = std::iter::once("wsgate".to_owned()).chain(args.split('\x1f').map(str::to_owned));
    let cfg = match crate::cli::load_from(args, &|_| None) {
        Ok(crate::cli::Command::Serve(cfg)) => cfg,
        other => panic!("the crash child serves: {other:?}"),
    };
    crate::logging::install(&cfg.log_level, cfg.log_format);
    let code = crate::serve::run(cfg);
    std::process::exit(if code == std::process::ExitCode::SUCCESS { 0 } else { 1 });
}

/// A running child gateway, its WebSocket address and what it logged.
pub(super) struct Gateway {
    child: Child,
    pub(super) addr: SocketAddr,
    pub(super) admin: SocketAddr,
    log: Arc<Mutex<Vec<Value>>>,
}

impl Gateway {
    pub(super) fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// [`start`](Self::start) with `extra` flags after the test's own.
    pub(super) fn start_with(data_dir: &Path, extra: &[&str]) -> Self {
        let data_dir = data_dir.to_str().expect("a UTF-8 temp path");
        let mut args = vec![
            "--listen=127.0.0.1:0",
            "--admin-listen=127.0.0.1:0",
            "--shards=2",
            "--auth-mode=none",
            "--log-format=json",
            "--store=disk",
            "--message-rate=0",
            "--drain-window=200ms",
            "--drain-timeout=10s",
            "--history-max-messages=1000000",
            "--offline-max-messages=1000000",
            "--history-max-bytes=256MiB",
            "--offline-max-bytes=256MiB",
            // The whole offline queue is queued at connect: it must fit in a send queue.
            "--send-queue-bytes=256MiB",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.push(format!("--data-dir={data_dir}"));
        args.extend(extra.iter().map(|&a| a.to_owned()));
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "server::tests_crash::crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads=1"])
            .env(CHILD_ARGS, args.join("\x1f"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the child gateway");
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        // Drains stderr for the child's whole life (a full pipe would stall it) and
        // hands over the address once the gateway says it listens.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if event["message"] == "listening" {
                    let addr = |field: &str, scheme: &str| {
                        let url = event[field].as_str().unwrap_or_default();
                        let host = url.trim_start_matches(scheme).split('/').next().unwrap_or_default();
                        host.parse::<SocketAddr>().ok()
                    };
                    let _ = tx.send(addr("ws", "ws://").zip(addr("admin", "http://")));
                }
                sink.lock().unwrap().push(event);
            }
        });
        let Some((addr, admin)) = rx.recv_timeout(Duration::from_secs(60)).ok().flatten() else {
            // Not a `Gateway` yet, so no `Drop`: the child must not outlive the test.
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child never listened: {:?}", log.lock().unwrap());
        };
        Self {
            child,
            addr,
            admin,
            log,
        }
    }

    /// The value of the metric `name` (summed over its label sets) from `/metrics`.
    pub(super) fn metric(&self, name: &str) -> f64 {
        let mut stream = std::net::TcpStream::connect(self.admin).expect("admin");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stream, &mut text).expect("metrics");
        text.lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The first logged event whose message is `message` (its fields at the top level).
    fn event(&self, message: &str) -> Option<Value> {
        let log = self.log.lock().unwrap();
        log.iter().find(|e| e["message"] == message).cloned()
    }

    pub(super) fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        let r = unsafe { libc::kill(pid, signal) };
        assert_eq!(r, 0, "kill {pid}");
    }

    /// Waits for the child to exit; returns its exit code (`None`: killed by a signal).
    pub(super) fn wait(mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "the child did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // A failed assertion must not leave a gateway running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A protocol client that returns errors instead of panicking when the gateway dies.
pub(super) struct Peer {
    client: Client,
}

impl Peer {
    pub(super) fn connect(addr: SocketAddr, user: &str) -> Option<(Self, Value)> {
        let request = UPGRADE
            .replace("GET /ws ", &format!("GET /ws?user={user} "))
            .replace("Host:", "Sec-WebSocket-Protocol: wsgate.v1.json\r\nHost:");
        let (client, head) = Client::handshake(addr, request.as_bytes());
        if !head.starts_with("HTTP/1.1 101 ") {
            eprintln!("{user}: no upgrade: {head:?}");
            return None;
        }
        let mut peer = Self { client };
        let welcome = peer.next()?;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        Some((peer, welcome))
    }

    pub(super) fn send(&mut self, message: &Value) -> std::io::Result<()> {
        let mut out = Vec::new();
        let text = message.to_string();
        self.client
            .ws
            .write_message(&mut out, true, text.as_bytes())
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        self.client.stream.write_all(&out)
    }

    /// The next message; `None` once the connection is gone (closed, reset, timed out).
    pub(super) fn next(&mut self) -> Option<Value> {
        match self.client.next_event()? {
            OwnedEvent::Text(text) => Some(serde_json::from_str(&text).expect("the server sends JSON")),
            OwnedEvent::Close(_) | OwnedEvent::Binary(_) => None,
        }
    }
}

/// What the senders were promised: per recipient, seq → body of every acked message.
type Acked = Arc<Mutex<Vec<BTreeMap<u64, Value>>>>;

/// Sends from `SENDERS` connections (up to 16 unacknowledged each) to the recipients in
/// turn, recording every `ack`, until the gateway goes away. Returns the threads.
fn start_senders(addr: SocketAddr, round: usize, acked: &Acked) -> Vec<std::thread::JoinHandle<u64>> {
    (0..SENDERS)
        .map(|s| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                let Some((mut peer, _)) = Peer::connect(addr, &format!("sender{s}")) else {
                    return 0;
                };
                let mut pending: BTreeMap<u64, (usize, Value)> = BTreeMap::new();
                let (mut next, mut acks) = (0u64, 0u64);
                loop {
                    while pending.len() < 16 {
                        let to = (next as usize + s) % RECIPIENTS;
                        let body = json!(format!("r{round}-s{s}-n{next}"));
                        let message = json!({"type": "send", "to": format!("rcpt{to}"), "id": next, "body": body});
                        if peer.send(&message).is_err() {
                            return acks;
                        }
                        pending.insert(next, (to, body));
                        next += 1;
                    }
                    let Some(reply) = peer.next() else { return acks };
                    match reply["type"].as_str() {
                        Some("ack") => {
                            let id = reply["id"].as_u64().expect("an ack carries the id");
                            let (to, body) = pending.remove(&id).expect("an ack of a pending send");
                            let seq = reply["seq"].as_u64().expect("an ack has a seq");
                            let previous = acked.lock().unwrap()[to].insert(seq, body);
                            assert!(previous.is_none(), "seq {seq} of rcpt{to} acked twice");
                            acks += 1;
                        }
                        // Shed on its way to a shard that stops (a drain): not acked, so
                        // not promised.
                        Some("error") if reply["code"] == "overloaded" => {
                            pending.remove(&reply["id"].as_u64().expect("an id"));
                        }
                        // Receipts of what the recipients acked, presence: not this test's.
                        Some("receipt" | "presence") => {}
                        _ => panic!("a send was refused: {reply}"),
                    }
                }
            })
        })
        .collect()
}

/// What one recipient has been delivered so far, over all its sessions.
#[derive(Default)]
struct Received {
    epoch: Option<u64>,
    bodies: BTreeMap<u64, Value>,
}

/// Connects every recipient, takes its offline messages and a `resume` from the last seq
/// it holds, and checks them: every seq up to the inbox's last comes, once per run of
/// deliveries and in order, with the body its sender was acked for, and the epoch is the
/// one the recipient saw before the restart. Acks what it got.
fn receive_all(addr: SocketAddr, acked: &Acked, received: &mut [Received]) {
    for (r, got) in received.iter_mut().enumerate() {
        let (mut peer, welcome) = Peer::connect(addr, &format!("rcpt{r}")).expect("recipient connects");
        let epoch = welcome["inbox"]["epoch"].as_u64().expect("an epoch");
        let last = welcome["inbox"]["seq"].as_u64().expect("a seq");
        if let Some(before) = got.epoch {
            assert_eq!(epoch, before, "rcpt{r}: the epoch survives the restart");
        }
        got.epoch = Some(epoch);
        let since = got.bodies.keys().next_back().copied().unwrap_or(0);
        peer.send(&json!({"type": "resume", "since": {"epoch": epoch, "seq": since}, "id": "re"}))
            .expect("resume");
        // Offline messages (sent on connect), then the replay after `since`: two runs,
        // each in seq order.
        let mut order = Vec::new();
        loop {
            let message = peer.next().unwrap_or_else(|| panic!("rcpt{r}: the gateway went away"));
            match message["type"].as_str() {
                Some("msg") => {
                    let seq = message["seq"].as_u64().expect("a seq");
                    if let Some(known) = got.bodies.get(&seq) {
                        assert_eq!(known, &message["body"], "rcpt{r} seq {seq} came back different");
                    }
                    got.bodies.insert(seq, message["body"].clone());
                    order.push(seq);
                }
                Some("resumed") => break,
                Some("resync") => panic!("rcpt{r}: resync instead of resume: {message}"),
                _ => {}
            }
        }
        let runs = 1 + order.windows(2).filter(|w| w[1] <= w[0]).count();
        assert!(runs <= 2, "rcpt{r}: out of order: {order:?}");
        let expected: Vec<u64> = (1..=last).collect();
        let have: Vec<u64> = got.bodies.keys().copied().collect();
        assert_eq!(have, expected, "rcpt{r}: every seq up to the inbox's last, once");
        for (seq, body) in &acked.lock().unwrap()[r] {
            assert_eq!(got.bodies.get(seq), Some(body), "rcpt{r}: acked seq {seq} was lost");
        }
        if last > 0 {
            peer.send(&json!({"type": "ack", "seq": last})).expect("ack");
        }
    }
}

/// Waits (bounded) until the senders got acks in this round, so every kill lands while
/// traffic flows, however slowly a busy machine starts the child.
fn wait_for_acks(acked: &Acked) {
    let total = |a: &Acked| a.lock().unwrap().iter().map(BTreeMap::len).sum::<usize>();
    let (before, deadline) = (total(acked), Instant::now() + Duration::from_secs(30));
    while total(acked) < before + 10 {
        assert!(Instant::now() < deadline, "no acks within 30 s of the senders starting");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A fresh directory under the system's temp dir, removed when the test passes.
pub(super) fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wsgate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A small xorshift, seeded from the clock and printed, so a failing run can be replayed.
fn kill_delays(rounds: usize) -> Vec<Duration> {
    let seed = std::env::var("WSGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("crash test seed {seed} (WSGATE_CRASH_SEED replays it)");
    let mut x: u64 = seed;
    (0..rounds)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Duration::from_millis(50 + x % 450)
        })
        .collect()
}

/// `rounds` rounds of: start the gateway on `dir`, deliver what the last round left,
/// send from every sender, then `signal` it at a random moment and wait for it to go
/// (SIGKILL: killed by the signal; SIGTERM: a drain that exits 0). Then a last start that
/// delivers everything; returns that gateway and the acks the senders got in all.
fn crash_rounds(dir: &Path, signal: i32, rounds: usize) -> (Gateway, u64) {
    let acked: Acked = Arc::new(Mutex::new(vec![BTreeMap::new(); RECIPIENTS]));
    let mut received: Vec<Received> = (0..RECIPIENTS).map(|_| Received::default()).collect();
    let mut total = 0;
    for (round, delay) in kill_delays(rounds).into_iter().enumerate() {
        let gateway = Gateway::start(dir);
        if round > 0 {
            // What the last kill left: delivered now, before anything new is sent.
            receive_all(gateway.addr, &acked, &mut received);
        }
        let senders = start_senders(gateway.addr, round, &acked);
        wait_for_acks(&acked);
        std::thread::sleep(delay);
        // SIGTERM's drain closes the senders with 1001 while they still send.
        gateway.signal(signal);
        if signal == libc::SIGKILL {
            assert_eq!(gateway.wait(Duration::from_secs(10)), None, "killed by the signal");
        } else {
            assert_eq!(gateway.wait(Duration::from_secs(30)), Some(0), "a drain exits 0");
        }
        let acks: u64 = senders.into_iter().map(|t| t.join().expect("a sender")).sum();
        assert!(acks > 0, "round {round}: the senders got acks before the signal");
        total += acks;
    }
    let gateway = Gateway::start(dir);
    receive_all(gateway.addr, &acked, &mut received);
    (gateway, total)
}

#[test]
fn every_message_acked_before_a_sigkill_is_delivered_after_the_restart() {
    let dir = temp_dir("crash-kill");
    let (gateway, total) = crash_rounds(&dir, libc::SIGKILL, 4);
    let recovered = gateway
        .event("message store recovered")
        .expect("the recovery is logged");
    assert!(recovered["records"].as_u64() >= Some(total), "{recovered}");
    gateway.signal(libc::SIGTERM);
    assert_eq!(gateway.wait(Duration::from_secs(30)), Some(0), "a drain exits 0");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_message_acked_before_a_sigterm_is_delivered_after_the_restart() {
    let dir = temp_dir("crash-term");
    let (gateway, _) = crash_rounds(&dir, libc::SIGTERM, 2);
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A user known before a restart is welcomed after it, with nothing else happening:
/// the recovered journal counts as durable (the first answer after a restart waited for
/// a write nobody asked for, so a returning user got the 101 and then nothing).
#[test]
fn a_user_known_before_a_restart_is_welcomed_after_it() {
    let dir = temp_dir("welcome-after-restart");
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let gateway = Gateway::start(&dir);
        let (_, first) = Peer::connect(gateway.addr, "returning").expect("the first welcome");
        gateway.signal(signal);
        // SIGKILL leaves no exit code; `wait` fails the test if the child lives on.
        let _ = gateway.wait(Duration::from_secs(30));
        let gateway = Gateway::start(&dir);
        let (_, again) = Peer::connect(gateway.addr, "returning").expect("a welcome after the restart");
        assert_eq!(again["inbox"], first["inbox"], "the same epoch and position");
        drop(gateway);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tmpfs mounted for one test (root only), unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` at a fresh directory; `None` (the test is skipped, and
    /// says so) when not running as root, which mounting needs.
    fn mount(name: &str, size: &str) -> Option<Self> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = temp_dir(name);
        let fs = Self { dir };
        fs.run(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]);
        Some(fs)
    }

    fn resize(&self, size: &str) {
        self.run(&["-o", &format!("remount,size={size}")]);
    }

    fn run(&self, args: &[&str]) {
        let status = Command::new("mount")
            .args(args)
            .arg(&self.dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount {args:?} {}", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the full-disk test's sender saw: acks recorded in `acked`, sends still waiting.
struct Filler {
    peer: Peer,
    next: u64,
    pending: BTreeMap<u64, Value>,
}

impl Filler {
    fn send(&mut self) {
        let body = json!(format!("{}-{}", self.next, "x".repeat(16 * 1024)));
        let message = json!({"type": "send", "to": "rcpt0", "id": self.next, "body": body});
        self.peer.send(&message).expect("the gateway is up");
        self.pending.insert(self.next, body);
        self.next += 1;
    }

    /// The next reply: `Ok(true)` an ack, `Ok(false)` a `storage_full` refusal, `Err`
    /// nothing within the read timeout.
    fn reply(&mut self, acked: &Acked) -> Result<bool, ()> {
        loop {
            let Some(reply) = self.peer.next() else { return Err(()) };
            let id = reply["id"].as_u64();
            match reply["type"].as_str() {
                Some("ack") => {
                    let body = self.pending.remove(&id.expect("an id")).expect("a pending send");
                    let seq = reply["seq"].as_u64().expect("a seq");
                    acked.lock().unwrap()[0].insert(seq, body);
                    return Ok(true);
                }
                Some("error") => {
                    assert_eq!(reply["code"], "storage_full", "{reply}");
                    self.pending.remove(&id.expect("an id"));
                    return Ok(false);
                }
                _ => {}
            }
        }
    }
}

#[test]
fn a_full_disk_refuses_new_messages_keeps_what_it_acked_and_recovers_when_space_returns() {
    let Some(fs) = Tmpfs::mount("full-disk", "4m") else {
        return;
    };
    let data = fs.dir.join("data");
    let gateway = Gateway::start(&data);
    let acked: Acked = Arc::new(Mutex::new(vec![BTreeMap::new(); RECIPIENTS]));
    let (peer, _) = Peer::connect(gateway.addr, "filler").expect("connects");
    peer.client
        .stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut filler = Filler {
        peer,
        next: 0,
        pending: BTreeMap::new(),
    };
    // Fill the 4 MiB with 16 KiB messages, a few in flight, until refusals come: a send
    // whose write fails waits (no ack), and from then on new sends are refused at once.
    let mut refused = false;
    while !refused {
        assert!(
            filler.next < 1000,
            "no storage_full after {} sends of 16 KiB into 4 MiB",
            filler.next
        );
        while filler.pending.len() < 4 {
            filler.send();
        }
        match filler.reply(&acked) {
            Ok(acked) => refused = !acked,
            // Every send in flight waits on the failing write: a new one hears the refusal.
            Err(()) => filler.send(),
        }
    }
    let acked_while_space = acked.lock().unwrap()[0].len();
    assert!(
        acked_while_space > 100,
        "acked {acked_while_space} before the disk was full"
    );
    // The rest in flight are refused at once too, but for those whose write failed.
    loop {
        match filler.reply(&acked) {
            Ok(false) => {}
            Ok(true) => panic!("acked while the disk is full"),
            Err(()) => break,
        }
    }
    let waiting = filler.pending.len();
    assert!(waiting >= 1, "the sends of the failed write wait");
    for _ in 0..3 {
        filler.send();
        assert_eq!(
            filler.reply(&acked),
            Ok(false),
            "a send to a full store is refused at once"
        );
    }
    // Counted (the shards publish their counters on their tick).
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.metric("wsgate_msg_storage_full_refusals_total") < 4.0
        || gateway.metric("wsgate_journal_write_errors_total") < 1.0
    {
        assert!(Instant::now() < deadline, "refusals and write errors are counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Space returns: the writes that waited go through and their sends are acked; new
    // sends are taken again.
    fs.resize("16m");
    while !filler.pending.is_empty() {
        assert_eq!(filler.reply(&acked), Ok(true), "{waiting} sends waited for space");
    }
    filler.send();
    assert_eq!(filler.reply(&acked), Ok(true), "new sends are taken again");
    // Nothing acked was lost, also the sends that waited through the failure.
    gateway.signal(libc::SIGKILL);
    assert_eq!(gateway.wait(Duration::from_secs(10)), None);
    let gateway = Gateway::start(&data);
    let mut received: Vec<Received> = (0..RECIPIENTS).map(|_| Received::default()).collect();
    receive_all(gateway.addr, &acked, &mut received);
    drop(gateway);
    drop(fs);
}
