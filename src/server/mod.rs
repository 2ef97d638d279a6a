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
//! thread sent a command, and the *ticker*, which runs the timer wheel every tick. The
//! ticker also bounds a glommio 0.9 quirk (an executor preempted before running a task
//! may park with runnable tasks): something runs on every executor at least once a tick.

pub mod ring;
pub mod shard;
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

pub use self::shard::{Command, ShardHandle};
use self::shard::{Shard, ShardState};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::Registry;
use crate::proto::close::CloseCode;
use crate::tls::TlsContext;

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
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (listeners, local_addr) = bind_group(cfg.listen, cfg.listen_backlog, cfg.shards)?;
        let (mut tls_listeners, tls_addr) = match (&tls, cfg.tls_listen_addr()) {
            (Some(_), Some(addr)) => {
                let (group, addr) = bind_group(addr, cfg.listen_backlog, cfg.shards)?;
                (group.into_iter().map(Some).collect(), Some(addr))
            }
            _ => ((0..cfg.shards).map(|_| None).collect::<Vec<_>>(), None),
        };
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for (id, listener) in listeners.into_iter().enumerate() {
            let shard_tls = tls_listeners[id].take().zip(tls.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            let cfg = cfg.clone();
            let registry = registry.clone();
            let auth = auth.clone();
            let thread = std::thread::Builder::new()
                .name(format!("wsgate-shard-{id}"))
                .spawn(move || {
                    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(id % cpus))
                        .name(&format!("shard-{id}"))
                        .io_memory(EXECUTOR_IO_MEMORY)
                        .make();
                    let executor = match executor {
                        Ok(executor) => executor,
                        Err(e) => {
                            let _ = tx.send(Err(io::Error::other(format!("shard {id}: executor: {e}"))));
                            return;
                        }
                    };
                    executor.run(async move {
                        let (shard, bell) = match Shard::new(id, cfg.clone(), registry, auth, listener, shard_tls) {
                            Ok(made) => made,
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        };
                        let _ = tx.send(Ok(shard.handle()));
                        run_shard(shard, bell, cfg).await;
                    });
                })?;
            let handle = rx
                .recv()
                .map_err(|_| io::Error::other(format!("shard {id} died while starting")))??;
            handles.push(handle);
            threads.push(thread);
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
        })
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

/// The shard's two tasks: the waker loop (doorbell) and the ticker (timer wheel).
async fn run_shard(shard: Shard, bell: OwnedFd, cfg: Arc<Config>) {
    let shard = Rc::new(RefCell::new(shard));
    let ticker = {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(cfg.tick).await;
                if shard.borrow_mut().on_tick() == ShardState::Finished {
                    return;
                }
            }
        })
    };
    // SAFETY: `bell` is a connected, non-blocking AF_UNIX stream socket we own.
    let mut bell = unsafe { glommio::net::UnixStream::from_raw_fd(bell.into_raw_fd()) };
    let mut bytes = [0u8; 256];
    let waker = glommio::spawn_local(async move {
        loop {
            match bell.read(&mut bytes).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if shard.borrow_mut().on_wake() == ShardState::Finished {
                return;
            }
        }
    });
    // The shard is finished when either task sees it finish; the other is dropped
    // (cancelled) with it.
    futures_lite::future::or(ticker, waker).await;
}

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tls_tests;
