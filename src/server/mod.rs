//! The server runtime: one pinned glommio executor per shard, each with its own
//! SO_REUSEPORT listener on the same address, so the kernel assigns every connection to
//! one shard for its whole life.
//!
//! - `ring`: the shard's connection ring (multishot accept and poll) and its doorbell.
//! - `shard`: connection table, handshake, frames, send queues, drain.
//! - `wheel`: the per-shard timer wheel.
//!
//! Each shard runs two glommio tasks on its executor: the *waker* loop, which sleeps on
//! the doorbell and runs a turn of the shard when the ring has completions or another
//! thread sent a command, and the *ticker*, which runs the timer wheel every tick.
//!
//! # The shard stall (glommio 0.9 parks with runnable tasks)
//!
//! glommio 0.9's run loop (`executor/mod.rs`, `LocalExecutor::run`) arms a preemption
//! timer in its latency ring (`poll_io`), then runs the task queues
//! (`run_task_queues`). If `need_preempt()` is already true when that run starts (the
//! timer fired, i.e. the thread lost its CPU for longer than the timer in between), it
//! runs nothing and reports "nothing ran"; the loop then parks (`Parker::park` →
//! `Reactor::react` → `sys::uring::Reactor::wait`), and `wait` decides to sleep from the
//! rings alone, never from the run queue. The park still wakes for a timer that is
//! registered or an I/O that is pending. If the ticker's timer had fired (the ticker is
//! runnable, so no timer is registered) and the doorbell poll had completed (the waker
//! is runnable, so nobody polls the socketpair), nothing is left: the thread sleeps in
//! `io_uring_enter` for good, doorbell bytes pile up unread and the tick stops. That is
//! the stall of the density runs (118 processes on two cores: threads routinely waited
//! more than the default 100 ms for a CPU). Two defences: the shards' preemption timer
//! is an hour ([`SHARD_PREEMPT_TIMER`]), which removes the trigger, and the watchdog
//! (`watchdog`) wakes a shard that sleeps through its ticks through glommio's own
//! cross-thread wake (the ticker's `Waker`, which writes the executor's eventfd, a read
//! glommio keeps armed whenever it parks). `tests::shards_parked_with_runnable_tasks_are_woken`
//! reproduces the stall in seconds with a 10 µs timer on one core.

pub mod admission;
pub mod journal;
pub mod ring;
mod shard;
pub mod watchdog;
pub mod wheel;

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use futures_lite::AsyncReadExt;

pub use self::shard::{COMMAND_INBOX_CAPACITY, Command, ShardHandle, Shared};
use self::shard::{Shard, ShardState};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::edge::Edge;
use crate::metrics::Registry;
use crate::msg::ShardId;
use crate::msg::api::{ApiRequest, ApiSink, SinkError};
use crate::msg::mesh::{self, Doorbell, Endpoint, MeshMsg};
use crate::proto::close::CloseCode;
use crate::tls::TlsContext;

/// glommio's preemption timer for the shard executors: long enough never to fire.
///
/// glommio 0.9 arms this timer in its latency ring before each run of the task queues,
/// and a run that finds it already expired (`need_preempt()`) runs no task at all and
/// returns "nothing ran", after which the executor parks (`executor/mod.rs`,
/// `run_task_queues` and `run`) without looking at its run queue. A thread that loses
/// its CPU for longer than the timer between arming it and running its tasks (100 ms by
/// default; routine with 240 threads on two cores) parks with runnable tasks. When both
/// shard tasks were runnable (the ticker's timer had fired, the doorbell had rung) the
/// park has nothing left to wait for: no timer (the ticker is not sleeping) and no
/// read on the doorbell (the waker is not reading), so it never returns. The shard
/// tasks are short turns and there is one task queue, so the timer has no work to do
/// here; an hour means the condition cannot arise.
pub const SHARD_PREEMPT_TIMER: std::time::Duration = std::time::Duration::from_secs(3600);

/// glommio's buffer memory for disk DMA, which the gateway does not use (the default is
/// 10 MiB per executor, registered and locked).
const EXECUTOR_IO_MEMORY: usize = 256 * 1024;

/// A running server: its shards and their threads.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    /// The TLS listeners' address, when TLS is on.
    tls_addr: Option<SocketAddr>,
    /// The TLS configuration, reloadable through [`Server::tls`].
    tls: Option<Arc<TlsContext>>,
    handles: Vec<Arc<ShardHandle>>,
    threads: Vec<JoinHandle<()>>,
    /// Stops the watchdog once the shards have ended.
    watchdog_stop: Arc<std::sync::atomic::AtomicBool>,
    watchdog: Option<JoinHandle<()>>,
    /// What each shard's recovery read (disk store only).
    recovery: Vec<journal::RecoveryReport>,
    /// The data directory's lock, held while the shards run.
    _data_dir_lock: Option<journal::DataDirLock>,
}

/// The backend API's way to the shards: a request goes into the shard's inbox as
/// [`Command::Api`] and rings its doorbell, like any command from another thread.
#[derive(Debug)]
pub struct ApiShards {
    handles: Vec<Arc<ShardHandle>>,
}

impl ApiSink for ApiShards {
    fn shards(&self) -> usize {
        self.handles.len()
    }

    fn deliver(&self, shard: ShardId, request: ApiRequest) -> Result<(), SinkError> {
        let handle = self.handles.get(usize::from(shard)).ok_or(SinkError::Unavailable)?;
        // A full inbox answers the request `overloaded` itself (see `ShardHandle::send`).
        handle.send(Command::Api(Box::new(request)));
        Ok(())
    }
}

/// The CPUs this process may run on (its affinity mask, which taskset and container
/// cpusets restrict), in ascending order; every CPU up to the machine's count if the
/// mask cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // its size into it.
    let (set, ok) = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let ok = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0;
        (set, ok)
    };
    let cpus: Vec<usize> = if ok {
        // SAFETY: CPU_ISSET reads the set it is given, for indices below CPU_SETSIZE.
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    } else {
        cpus
    }
}

/// The CPU shard `id` is pinned to: the `id`-th allowed CPU, wrapping round (pinning to
/// `id % cpu_count` would pin outside a cpuset that does not start at CPU 0).
pub fn cpu_for_shard(allowed: &[usize], id: usize) -> usize {
    assert!(!allowed.is_empty(), "a process runs on at least one CPU");
    allowed[id % allowed.len()]
}

/// The Redis connection settings and this node's identity, from the configuration
/// (the host is resolved here, before the shards start).
fn cluster_setup(
    cfg: &Config,
    url: &crate::auth::Secret,
    local_addr: SocketAddr,
) -> io::Result<(crate::cluster::ConnConfig, crate::cluster::owner::ClusterConfig)> {
    let text = std::str::from_utf8(url.expose()).map_err(|_| io::Error::other("redis: the URL is not UTF-8"))?;
    let url = crate::cluster::RedisUrl::parse(text).map_err(|e| io::Error::other(format!("redis: {e}")))?;
    let mut conn = crate::cluster::ConnConfig::from_url(&url, cfg.redis_ca.as_deref())?;
    conn.outbox_max_bytes = cfg.redis_outbox_bytes;
    conn.command_timeout = cfg.redis_command_timeout;
    if let Some(file) = &cfg.redis_password_file {
        conn.password = Some(
            crate::cluster::read_password_file(file)
                .map_err(|e| io::Error::other(format!("redis password file: {e}")))?,
        );
    }
    let node: Arc<str> = match &cfg.node_id {
        Some(id) => id.as_str().into(),
        None => {
            let host = crate::sys::hostname().unwrap_or_else(|| "wsgate".to_owned());
            let id: String = format!("{host}-{}", local_addr.port())
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                        c
                    } else {
                        '_'
                    }
                })
                .take(64)
                .collect();
            id.into()
        }
    };
    crate::cluster::owner::check_node_id(&node).map_err(io::Error::other)?;
    // Redis down at start must not keep the node down: without an answer, it is taken
    // for one server (a Redis Cluster's layout is learnt at the next start; until then
    // its MOVED replies are answered `unavailable`).
    let topology = match crate::cluster::topology::discover(&conn) {
        Ok(topology) => topology,
        Err(e) => {
            tracing::warn!(
                addr = %conn.addrs[0],
                error = %e,
                "redis: no answer at start; taken for a single server, connecting in the background"
            );
            crate::cluster::Topology::single(conn.addrs[0])
        }
    };
    tracing::info!(
        masters = topology.masters.len(),
        cluster = topology.slots.is_some(),
        node = %node,
        "redis layout"
    );
    Ok((
        conn,
        crate::cluster::owner::ClusterConfig {
            node,
            node_ttl: cfg.node_ttl,
            topology,
        },
    ))
}

/// Binds a listening socket with SO_REUSEPORT and the configured backlog (glommio's
/// `TcpListener::bind` hard-codes 1024 and offers no socket options).
pub fn bind_listener(addr: SocketAddr, backlog: u32) -> io::Result<OwnedFd> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    // SAFETY: the descriptor comes straight from a socket we own.
    Ok(unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) })
}

/// `count` listeners on `addr` (SO_REUSEPORT); with port 0 the first picks the port and
/// the others join it. Returns them and the address they listen on.
fn bind_group(addr: SocketAddr, backlog: u32, count: usize) -> io::Result<(Vec<OwnedFd>, SocketAddr)> {
    let first = bind_listener(addr, backlog)?;
    let local_addr = {
        let socket = socket2::SockRef::from(&first);
        socket.local_addr()?.as_socket().expect("an IP listener")
    };
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(bind_listener(local_addr, backlog)?);
    }
    Ok((listeners, local_addr))
}

impl Server {
    /// Binds one listener per shard and starts the shards. With port 0, the first bind
    /// picks the port and the others join it. With TLS configured, loads the certificate
    /// and key first (see [`Server::start_with_tls`]).
    pub fn start(cfg: Arc<Config>, registry: Arc<Registry>, auth: Arc<Authenticator>) -> io::Result<Self> {
        let tls = match cfg.tls_files() {
            Some(files) => Some(Arc::new(
                TlsContext::load(files).map_err(|e| io::Error::other(e.to_string()))?,
            )),
            None => None,
        };
        Self::start_with_tls(cfg, registry, auth, tls)
    }

    /// [`Server::start`] with the TLS configuration already loaded (the binary loads it
    /// itself, to exit with a configuration error when the files are bad). With `tls`,
    /// every shard also gets a listener on [`Config::tls_listen_addr`].
    pub fn start_with_tls(
        cfg: Arc<Config>,
        registry: Arc<Registry>,
        auth: Arc<Authenticator>,
        tls: Option<Arc<TlsContext>>,
    ) -> io::Result<Self> {
        let cpus = allowed_cpus();
        let (listeners, local_addr) = bind_group(cfg.listen, cfg.listen_backlog, cfg.shards)?;
        let (mut tls_listeners, tls_addr) = match (&tls, cfg.tls_listen_addr()) {
            (Some(_), Some(addr)) => {
                let (group, addr) = bind_group(addr, cfg.listen_backlog, cfg.shards)?;
                (group.into_iter().map(Some).collect(), Some(addr))
            }
            _ => ((0..cfg.shards).map(|_| None).collect::<Vec<_>>(), None),
        };
        // With `--redis` the fleet's messages live in Redis, not in the local journal.
        let disk = !cfg.echo && cfg.store == crate::config::StoreKind::Disk && cfg.redis.is_none();
        let cluster = match &cfg.redis {
            Some(url) if !cfg.echo => Some(cluster_setup(&cfg, url, local_addr)?),
            _ => None,
        };
        let data_dir = if disk {
            Some(journal::prepare(&cfg).map_err(io::Error::other)?)
        } else {
            None
        };
        let mut recovery = Vec::new();
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        let edge = Arc::new(Edge::new(cfg.edge.clone()));
        #[cfg(test)]
        let preempt_timer = tests::PREEMPT_TIMER.get().unwrap_or(SHARD_PREEMPT_TIMER);
        #[cfg(not(test))]
        let preempt_timer = SHARD_PREEMPT_TIMER;
        // Test servers start their shards at a rotating CPU, so parallel tests do not all
        // pile onto the first one (see `tests::first_cpu_for_next_server`).
        #[cfg(test)]
        let first_cpu = tests::first_cpu_for_next_server(cfg.shards);
        #[cfg(not(test))]
        let first_cpu = 0;
        let shared = Shared {
            cfg: cfg.clone(),
            registry,
            auth,
            edge,
            drain: Arc::new(shard::DrainGroup::new(cfg.shards)),
        };
        // Each shard gets its ends of the cross-shard rings once every shard exists
        // (the rings ring the shards' doorbells); until then its thread waits.
        let mut mesh_senders = Vec::new();
        let mut starting = Vec::new();
        for (id, listener) in listeners.into_iter().enumerate() {
            let shard_tls = tls_listeners[id].take().zip(tls.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            let (mesh_tx, mesh_rx) = std::sync::mpsc::channel::<Endpoint<MeshMsg>>();
            mesh_senders.push(mesh_tx);
            let cpu = cpu_for_shard(&cpus, first_cpu + id);
            let cfg = cfg.clone();
            let shared = shared.clone();
            let cluster = cluster.clone();
            let thread = std::thread::Builder::new()
                .name(format!("wsgate-shard-{id}"))
                .spawn(move || {
                    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
                        .name(&format!("shard-{id}"))
                        .io_memory(EXECUTOR_IO_MEMORY)
                        .preempt_timer(preempt_timer)
                        .make();
                    let executor = match executor {
                        Ok(executor) => executor,
                        Err(e) => {
                            let _ = tx.send(Err(io::Error::other(format!("shard {id}: executor: {e}"))));
                            return;
                        }
                    };
                    executor.run(async move {
                        let recovered = if disk {
                            match journal::recover(&cfg, id, &cfg.msg) {
                                Ok(recovered) => Some(recovered),
                                Err(e) => {
                                    let _ = tx.send(Err(io::Error::other(format!("shard {id}: recovery: {e}"))));
                                    return;
                                }
                            }
                        } else {
                            None
                        };
                        let (store, writer, report) = match recovered {
                            Some(r) => (Some(r.store), Some(r.writer), Some(r.report)),
                            None => (None, None, None),
                        };
                        let (mut shard, bell) = match Shard::new(id, shared, listener, shard_tls, store) {
                            Ok(made) => made,
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        };
                        if let Some(writer) = &writer {
                            shard.attach_journal(writer.signal(), writer.stats());
                        }
                        let cluster = cluster.map(|(conn, node)| shard.attach_cluster(&conn, &node));
                        let _ = tx.send(Ok((shard.handle(), report)));
                        match mesh_rx.recv() {
                            Ok(endpoint) => shard.attach_mesh(endpoint),
                            // Another shard failed to start: the server is not coming up.
                            Err(_) => return,
                        }
                        run_shard(shard, bell, cfg, writer, cluster).await;
                    });
                })?;
            starting.push((id, rx));
            threads.push(thread);
        }
        // Every shard starts (and recovers its journal) at once: the time to ready is the
        // slowest shard's recovery, not the sum.
        for (id, rx) in starting {
            let (handle, report) = rx
                .recv()
                .map_err(|_| io::Error::other(format!("shard {id} died while starting")))??;
            handles.push(handle);
            recovery.extend(report);
        }
        let bells: Vec<Arc<dyn Doorbell>> = handles
            .iter()
            .map(|handle| Arc::new(handle.bell()) as Arc<dyn Doorbell>)
            .collect();
        let endpoints = mesh::build::<MeshMsg>(bells, cfg.msg.ring_depth, cfg.msg.ring_full_wait);
        for (endpoint, sender) in endpoints.into_iter().zip(mesh_senders) {
            sender
                .send(endpoint)
                .map_err(|_| io::Error::other("a shard died while starting"))?;
        }
        let watchdog_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watchdog = watchdog::spawn(handles.clone(), cfg.tick, watchdog_stop.clone())?;
        Ok(Self {
            local_addr,
            tls_addr,
            tls,
            handles,
            threads,
            watchdog_stop,
            watchdog: Some(watchdog),
            recovery,
            _data_dir_lock: data_dir,
        })
    }

    /// What each shard's recovery read at start (empty without the disk store).
    pub fn recovery(&self) -> &[journal::RecoveryReport] {
        &self.recovery
    }

    /// The address the shards listen on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TLS listeners' address (with the real port when 0 was asked for), when TLS is
    /// on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The TLS configuration, for reloading it ([`TlsContext::reload`]): new
    /// connections pick up a reloaded certificate at accept, open ones keep theirs.
    pub fn tls(&self) -> Option<&Arc<TlsContext>> {
        self.tls.as_ref()
    }

    /// Starts the graceful drain on every shard.
    pub fn drain(&self, code: CloseCode) {
        for handle in &self.handles {
            handle.send(Command::Drain { code });
        }
    }

    /// How the backend API (`crate::admin`) reaches these shards.
    pub fn api_shards(&self) -> ApiShards {
        ApiShards {
            handles: self.handles.clone(),
        }
    }

    /// Waits for every shard to finish (after a drain).
    pub fn join(mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.watchdog_stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
    }
}

/// The shard's tasks: the waker loop (doorbell), the ticker (timer wheel) and, with the
/// disk store, the journal writer, which outlives the other two long enough to write
/// what the shard's last turns encoded.
async fn run_shard(
    shard: Shard,
    bell: OwnedFd,
    cfg: Arc<Config>,
    writer: Option<journal::Writer>,
    cluster: Option<(Vec<crate::cluster::Driver>, Rc<shard::ClusterEvents>)>,
) {
    let handle = shard.handle();
    // SAFETY: gettid has no preconditions.
    handle.set_tid(unsafe { libc::gettid() });
    let shard = Rc::new(RefCell::new(shard));
    // With `--redis`: the connection's task, and the pump that hands its replies and
    // pushes to the shard.
    let cluster = cluster.map(|(drivers, events)| {
        let connections: Vec<_> = drivers.into_iter().map(|d| glommio::spawn_local(d.run())).collect();
        let pump = glommio::spawn_local(shard::cluster_pump(shard.clone(), events));
        (connections, pump)
    });
    let journal = writer.map(|writer| {
        let signal = writer.signal();
        (signal, glommio::spawn_local(writer.run(shard.clone())))
    });
    let ticker = {
        let shard = shard.clone();
        let handle = handle.clone();
        glommio::spawn_local(async move {
            // The watchdog's way in (see `ShardHandle::kick`).
            std::future::poll_fn(|cx| {
                handle.set_ticker_waker(cx.waker());
                std::task::Poll::Ready(())
            })
            .await;
            let mut collected = std::time::Instant::now();
            loop {
                // The end-to-end watchdog test's way to lose the ticker's wake-up.
                #[cfg(test)]
                tests::park_ticker_if_asked(&handle).await;
                glommio::timer::sleep(cfg.tick).await;
                if shard.borrow_mut().on_tick() == ShardState::Finished {
                    return;
                }
                if collected.elapsed() >= crate::sys::ALLOCATOR_COLLECT_INTERVAL {
                    crate::sys::release_free_memory();
                    collected = std::time::Instant::now();
                }
            }
        })
    };
    // SAFETY: `bell` is a connected, non-blocking AF_UNIX stream socket we own.
    let mut bell = unsafe { glommio::net::UnixStream::from_raw_fd(bell.into_raw_fd()) };
    let mut bytes = [0u8; 256];
    let waker = glommio::spawn_local({
        let shard = shard.clone();
        async move {
            loop {
                let n = match bell.read(&mut bytes).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if shard.borrow_mut().on_wake(&bytes[..n]) == ShardState::Finished {
                    return;
                }
            }
        }
    });
    // The shard is finished when either task sees it finish; the other is dropped
    // (cancelled) with it.
    match cluster {
        Some((connections, pump)) => {
            futures_lite::future::or(futures_lite::future::or(ticker, waker), pump).await;
            Shard::close_cluster(&shard).await;
            for connection in connections {
                connection.await;
            }
        }
        None => futures_lite::future::or(ticker, waker).await,
    }
    if let Some((signal, writer)) = journal {
        signal.stop();
        writer.await;
    }
    handle.finish();
}

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_api;
#[cfg(test)]
mod tests_cluster;
#[cfg(test)]
mod tests_crash;
#[cfg(test)]
mod tests_deflate;
#[cfg(test)]
mod tests_density;
#[cfg(test)]
mod tests_edge;
#[cfg(test)]
mod tests_msg;
#[cfg(test)]
mod tls_tests;
