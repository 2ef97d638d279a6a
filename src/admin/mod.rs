//! The admin listener: `/healthz`, `/readyz`, `/metrics` and the backend API over
//! HTTP/1.1, on a thread of its own.
//!
//! Admin traffic is a probe or a scrape every few seconds, so it runs away from the shard
//! cores and their io_uring event loops: a slow scraper can never delay a WebSocket
//! frame. `main` binds the admin address, builds an [`AdminState`] sharing the metrics
//! [`Registry`] with the shards, and calls [`spawn`]. The shards publish into the
//! registry; `main` flips [`AdminState::ready`] once every shard listens and
//! [`AdminState::draining`] on SIGTERM. The thread serves until the process exits.
//!
//! # Why hyper, and why tokio on this one thread
//!
//! The HTTP/1.1 is hyper's (`hyper::server::conn::http1`), not ours. Every line of HTTP
//! parsing we write is attack surface on a port that carries the API key; hyper's is
//! mature, widely deployed and fuzzed, and it handles the edge cases a hand-written
//! parser gets wrong: conflicting `Content-Length` headers (400), `Content-Length` with
//! `Transfer-Encoding` (the chunked framing wins and the connection closes, RFC 9112
//! §6.3), chunked bodies, chunk extensions and trailers, obsolete line folding,
//! `Expect: 100-continue`. What stays here is routing, the limits and the handlers.
//!
//! hyper needs an async runtime. A tokio current-thread runtime (features `rt`, `net`,
//! `time` only) runs on the admin thread and nowhere else: no worker pool, no blocking
//! pool, nothing of tokio on a shard core, and nothing to share with glommio.
//!
//! # Connections
//!
//! One task per connection on that runtime, at most [`ADMIN_MAX_CONCURRENT`] at once;
//! past the bound the accept loop answers 503 itself and closes. A connection that sends
//! nothing, or trickles its head, holds only its own task until the header-read timeout,
//! never the health probes behind it (orchestrators restart processes whose probes time
//! out). Every response carries `Connection: close`: there is no keep-alive to track,
//! and a scrape costs one connection either way. The limits a request meets, in order:
//! the head ([`ADMIN_MAX_REQUEST_HEAD_BYTES`], [`ADMIN_MAX_HEADERS`]: 431) within
//! [`ADMIN_REQUEST_TIMEOUT`] of accept (408), then the body ([`ADMIN_MAX_BODY_BYTES`]:
//! 413) by the same deadline (408).
//!
//! # Routes
//!
//! A request whose body has been read is dispatched through the `ROUTES` table by method
//! and path; a path in the table with another method gets 405 and an `Allow` header, any
//! other path 404. A new endpoint such as `POST /api/...` is one row in `ROUTES`, one
//! `Endpoint` and one handler function.
//!
//! # The backend API
//!
//! `/api/...` (see the README's "Backend API"): application backends publish to rooms,
//! send to users, ask for presence, disconnect users and read totals. Off unless an
//! API key is configured ([`ApiState`]); every call needs `Authorization: Bearer <key>`
//! (parsed by the crate's one strict Bearer parser, `crate::auth::bearer_token`, and
//! compared in constant time; the key is never logged or echoed). JSON in and out;
//! bodies bounded by [`ADMIN_MAX_BODY_BYTES`] and fields by the messaging limits.
//!
//! The admin thread never touches shard state: it validates the request and hands an
//! [`ApiRequest`] to the owner shard of the key through an [`ApiSink`], then waits up
//! to [`API_REPLY_TIMEOUT`] for the answer on the request's channel (504 after that).
//! Requests are counted in `wsgate_api_requests_total{route,status}`.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::StatusCode;
use hyper::body::{Body, Bytes, Incoming};
use hyper::header;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};

use crate::auth::Secret;
use crate::metrics::{ProcessInfo, Registry, render, render_api_requests};
use crate::msg::api::{ApiOp, ApiReply, ApiRequest, ApiSink};
use crate::msg::protocol::check_name;
use crate::msg::{KeyKind, MsgLimits, ShardId, owner_of};

mod api;

use self::api::*;

/// Bytes of request line and headers of one admin request. Beyond it: 431 and close,
/// as soon as that many bytes are buffered without a complete head (hyper's
/// `max_header_size` and `max_buf_size`). Probes and scrapers send a few hundred bytes;
/// 8 KiB matches common HTTP servers.
pub const ADMIN_MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// Headers of one admin request (hyper's `max_headers`). Beyond it: 431.
pub const ADMIN_MAX_HEADERS: usize = 32;
/// Time a client has to deliver its whole request, head and body, from accept. Beyond
/// it: 408 and close. hyper's header-read timeout starts when the connection starts
/// reading its head (at accept), and the body must be in by the same deadline, so a
/// client trickling a byte at a time cannot hold a connection longer than this.
pub const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Request body bytes of every route. Beyond it: 413, decided from `Content-Length`
/// before a byte of the body is read, and for a chunked body as soon as the bytes
/// received pass it.
pub const ADMIN_MAX_BODY_BYTES: usize = 64 * 1024;
/// Admin connections served at once (one task each). Beyond it the accept loop answers
/// 503 at once and closes, so stuck clients cost at most this many sockets and buffers.
pub const ADMIN_MAX_CONCURRENT: usize = 8;
/// Pause after an accept error such as EMFILE, which would otherwise repeat in a tight
/// loop and burn a core while the process is out of descriptors.
pub const ADMIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// After the response, how long we wait for the client to close before we do. Closing
/// with unread request bytes makes the kernel send a reset, which can destroy the
/// response before the client reads it; reading until the client closes avoids that.
pub const ADMIN_LINGER: Duration = Duration::from_millis(500);
/// Bytes read and thrown away while lingering; then we close regardless.
pub const ADMIN_LINGER_MAX_BYTES: usize = 64 * 1024;

// hyper refuses a read buffer under 8 KiB; the head limit doubles as that buffer's cap.
const _: () = assert!(ADMIN_MAX_REQUEST_HEAD_BYTES >= 8 * 1024);

/// What the admin endpoints report, shared between `main`, the shards and the admin
/// thread.
#[derive(Debug)]
pub struct AdminState {
    /// The shards' published metrics, rendered by `/metrics`.
    pub registry: Arc<Registry>,
    /// Set on SIGTERM: `/readyz` answers 503 "draining" so load balancers stop sending
    /// new clients while existing connections are closed.
    pub draining: AtomicBool,
    /// Set once every shard listens: until then `/readyz` answers 503 "starting".
    pub ready: AtomicBool,
    /// The soft open-files limit in force, reported as `wsgate_open_files_limit`.
    pub nofile_limit: u64,
    /// TLS is configured: `/metrics` reports certificate reloads.
    pub tls: AtomicBool,
    /// `--redis` is configured: `/readyz` also needs every shard's Redis connection up.
    pub cluster: AtomicBool,
    /// The backend API, when an API key is configured; `None`: the `/api/` routes
    /// answer 404 "API disabled".
    pub api: Option<ApiState>,
    /// Backend API requests answered: (route, status) → count.
    api_requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl AdminState {
    /// A state that is neither ready nor draining.
    pub fn new(registry: Arc<Registry>, nofile_limit: u64) -> Self {
        Self {
            registry,
            draining: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            nofile_limit,
            tls: AtomicBool::new(false),
            cluster: AtomicBool::new(false),
            api: None,
            api_requests: Mutex::new(BTreeMap::new()),
        }
    }

    /// Turns the backend API on.
    #[must_use]
    pub fn with_api(mut self, api: ApiState) -> Self {
        self.api = Some(api);
        self
    }

    fn count_api(&self, route: &'static str, status: u16) {
        let mut counts = self.api_requests.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry((route, status)).or_insert(0) += 1;
    }
}

/// How long an API call waits for the shard's answer. Beyond it: 504 (the request may
/// still take effect: a publish that timed out may have been sequenced).
pub const API_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a call waiting for a shard looks at its answer channel. The shards answer
/// on a std channel with `try_send` (`msg::api`: glommio executors must never block, and
/// they know nothing of tokio), which cannot wake a task; so the waiting task looks
/// again every millisecond. It adds at most this much to an answer and costs nothing
/// while no call waits.
pub const API_REPLY_POLL: Duration = Duration::from_millis(1);

/// The backend API's key, the way to the shards and the field limits.
pub struct ApiState {
    key: Secret,
    sink: Arc<dyn ApiSink>,
    max_payload_bytes: usize,
    max_room_name_bytes: usize,
    max_user_id_bytes: usize,
    timeout: Duration,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key redacts itself; the sink is described by its own Debug.
        f.debug_struct("ApiState")
            .field("key", &self.key)
            .field("sink", &self.sink)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// The API with `key` (from `Config::load_api_key`), reaching the shards through
    /// `sink`, with the field limits of `limits` (the same a client gets).
    pub fn new(key: Secret, sink: Arc<dyn ApiSink>, limits: &MsgLimits) -> Self {
        Self {
            key,
            sink,
            max_payload_bytes: limits.max_payload_bytes,
            max_room_name_bytes: limits.max_room_name_bytes,
            max_user_id_bytes: limits.max_user_id_bytes,
            timeout: API_REPLY_TIMEOUT,
        }
    }

    /// The same with another reply timeout (tests).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Serves the admin endpoints on `listener` from a new thread named `wsgate-admin`, until
/// the process exits. Fails if the runtime cannot be built, the listener cannot be
/// registered with it, or the thread cannot be started.
pub fn spawn(listener: std::net::TcpListener, state: Arc<AdminState>) -> io::Result<JoinHandle<()>> {
    spawn_with(listener, state, Settings::default())
}

/// The limits the server runs with; tests shorten them.
#[derive(Clone, Copy, Debug)]
struct Settings {
    /// The header-read timeout and the whole-request deadline, both from accept
    /// ([`ADMIN_REQUEST_TIMEOUT`]).
    request_timeout: Duration,
    /// Connections served at once ([`ADMIN_MAX_CONCURRENT`]).
    max_concurrent: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            request_timeout: ADMIN_REQUEST_TIMEOUT,
            max_concurrent: ADMIN_MAX_CONCURRENT,
        }
    }
}

impl Settings {
    /// The most one connection may live, lingering aside: the request
    /// (`request_timeout`), the shards' answer (`reply_timeout`), then as long again as
    /// the request for writing the response, so a client that stops reading cannot hold
    /// its place for ever.
    fn connection_timeout(&self, reply_timeout: Duration) -> Duration {
        self.request_timeout + reply_timeout + self.request_timeout
    }

    /// hyper's HTTP/1 server with our limits.
    fn http1(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.request_timeout)
            .max_header_size(ADMIN_MAX_REQUEST_HEAD_BYTES)
            .max_buf_size(ADMIN_MAX_REQUEST_HEAD_BYTES)
            .max_headers(ADMIN_MAX_HEADERS)
            // One request per connection (`Connection: close` on every response).
            .keep_alive(false)
            // A client that shuts down its sending side after the request (`nc -N`,
            // some probes) still gets its answer.
            .half_close(true)
            // `Content-Length`, not `content-length`: what scripts grepping a response
            // expect (header names are case-insensitive to every HTTP client).
            .title_case_headers(true);
        builder
    }
}

fn spawn_with(
    listener: std::net::TcpListener,
    state: Arc<AdminState>,
    settings: Settings,
) -> io::Result<JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    // tokio waits for readiness with epoll: the socket itself must not block.
    listener.set_nonblocking(true)?;
    let listener = {
        let _entered = runtime.enter();
        TcpListener::from_std(listener)?
    };
    std::thread::Builder::new()
        .name("wsgate-admin".to_owned())
        .spawn(move || {
            // Connection tasks borrow nothing across threads: a `LocalSet` runs them on
            // this thread without `Send` bounds.
            let tasks = tokio::task::LocalSet::new();
            runtime.block_on(tasks.run_until(accept_loop(listener, state, settings)));
        })
}

/// Gives a connection's place back when its task ends, panic included (the runtime
/// drops a panicked task's future), so a panicking handler cannot leak a place.
struct ActiveSlot(Rc<Cell<usize>>);

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<AdminState>, settings: Settings) {
    let active = Rc::new(Cell::new(0));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => continue,
            Err(_) => {
                tokio::time::sleep(ADMIN_ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if active.get() >= settings.max_concurrent {
            refuse_busy(&stream);
            continue;
        }
        active.set(active.get() + 1);
        let slot = ActiveSlot(Rc::clone(&active));
        tokio::task::spawn_local(serve_connection(stream, Arc::clone(&state), settings, slot));
    }
}

/// Answers 503 from the accept loop, without waiting for the request.
fn refuse_busy(stream: &TcpStream) {
    // One non-blocking attempt each, so the accept loop never waits on this client: the
    // send buffer of a fresh socket takes a small response at once. Whatever part of the
    // request has arrived is read first, as closing with unread bytes sends a reset.
    let _ = stream.try_read(&mut [0u8; 4096]);
    let _ = stream.try_write(&raw_response(StatusCode::SERVICE_UNAVAILABLE, "admin listener busy\n"));
    let _ = socket2::SockRef::from(stream).shutdown(Shutdown::Write);
}

async fn serve_connection(mut stream: TcpStream, state: Arc<AdminState>, settings: Settings, _slot: ActiveSlot) {
    let deadline = Instant::now() + settings.request_timeout;
    let reply_timeout = state.api.as_ref().map_or(Duration::ZERO, |api| api.timeout);
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(respond(request, &state, deadline).await.into_http()) }
    });
    let connection = settings.http1().serve_connection(TokioIo::new(&mut stream), service);
    match tokio::time::timeout(settings.connection_timeout(reply_timeout), connection).await {
        // Still writing to a client that does not read: drop it.
        Err(_) => return,
        // The header-read timeout: hyper closes without a word, and has written
        // nothing (one request per connection), so the 408 is ours to send.
        Ok(Err(e)) if e.is_timeout() => {
            let _ = stream.try_write(&raw_response(StatusCode::REQUEST_TIMEOUT, "request timeout\n"));
        }
        // Answered, by a handler or by hyper itself (400 or 431 for a bad head), or the
        // client went away.
        Ok(_) => {}
    }
    linger(&stream).await;
}

/// Half-closes and reads until the client closes (bounded by [`ADMIN_LINGER`] and
/// [`ADMIN_LINGER_MAX_BYTES`]), so our close does not reset the connection under the
/// response.
async fn linger(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).shutdown(Shutdown::Write);
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut discarded = 0;
        while discarded < ADMIN_LINGER_MAX_BYTES {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(n) => discarded += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(ADMIN_LINGER, drain).await;
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// One request with its whole body, handed to a route handler.
#[derive(Debug)]
struct Request {
    /// Method, target and headers, as hyper parsed them.
    head: hyper::http::request::Parts,
    /// The body, at most [`ADMIN_MAX_BODY_BYTES`].
    body: Bytes,
}

impl Request {
    /// The target's path, still percent-encoded.
    fn path(&self) -> &str {
        self.head.uri.path()
    }
}

/// One request: its body read within the limits, then the route's answer.
async fn respond(request: hyper::Request<Incoming>, state: &AdminState, deadline: Instant) -> Response {
    let (head, body) = request.into_parts();
    match read_body(&head, body, deadline).await {
        Ok(body) => route(&Request { head, body }, state).await,
        Err(response) => response,
    }
}

/// Reads the body by `deadline`, at most [`ADMIN_MAX_BODY_BYTES`].
async fn read_body(head: &hyper::http::request::Parts, body: Incoming, deadline: Instant) -> Result<Bytes, Response> {
    let too_large = || Response::text(413, "request body too large\n");
    // hyper decodes chunked, the one transfer coding it accepts last, and leaves any
    // coding before it (`gzip, chunked`) to us: we implement none (RFC 9112 §6.1: 501).
    let codings = head.headers.get_all(header::TRANSFER_ENCODING);
    if codings
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
    {
        return Err(Response::text(
            501,
            "transfer codings other than chunked are not supported\n",
        ));
    }
    // `Content-Length` (hyper's exact size hint) decides before anything is read.
    if body.size_hint().lower() > ADMIN_MAX_BODY_BYTES as u64 {
        return Err(too_large());
    }
    let read = Limited::new(body, ADMIN_MAX_BODY_BYTES).collect();
    match tokio::time::timeout_at(deadline.into(), read).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        // A broken chunk, or the client closed mid-body (then nobody reads this).
        Ok(Err(_)) => Err(Response::text(400, "malformed request body\n")),
        Err(_) => Err(Response::text(408, "request timeout\n")),
    }
}

// ---------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------

/// What a route does; [`handle`] maps each to its handler.
#[derive(Clone, Copy, Debug)]
enum Endpoint {
    Healthz,
    Readyz,
    Metrics,
    Publish,
    Send,
    PresenceUser,
    PresenceRoom,
    Disconnect,
    Stats,
}

/// One endpoint: a method and a path, and what answers it.
struct Route {
    method: &'static str,
    /// The exact path, or with `prefix` the path's beginning (ending in `/`; the rest,
    /// not empty, is the handler's parameter).
    path: &'static str,
    prefix: bool,
    endpoint: Endpoint,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        if self.prefix {
            path.len() > self.path.len() && path.starts_with(self.path)
        } else {
            path == self.path
        }
    }

    /// The label of `wsgate_api_requests_total`: the path without a trailing `/`.
    fn label(&self) -> &'static str {
        self.path.strip_suffix('/').unwrap_or(self.path)
    }
}

/// Every endpoint. A path may appear once per method.
const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/healthz",
        prefix: false,
        endpoint: Endpoint::Healthz,
    },
    Route {
        method: "GET",
        path: "/readyz",
        prefix: false,
        endpoint: Endpoint::Readyz,
    },
    Route {
        method: "GET",
        path: "/metrics",
        prefix: false,
        endpoint: Endpoint::Metrics,
    },
    Route {
        method: "POST",
        path: "/api/publish",
        prefix: false,
        endpoint: Endpoint::Publish,
    },
    Route {
        method: "POST",
        path: "/api/send",
        prefix: false,
        endpoint: Endpoint::Send,
    },
    Route {
        method: "GET",
        path: "/api/presence/user/",
        prefix: true,
        endpoint: Endpoint::PresenceUser,
    },
    Route {
        method: "GET",
        path: "/api/presence/room/",
        prefix: true,
        endpoint: Endpoint::PresenceRoom,
    },
    Route {
        method: "POST",
        path: "/api/disconnect",
        prefix: false,
        endpoint: Endpoint::Disconnect,
    },
    Route {
        method: "GET",
        path: "/api/stats",
        prefix: false,
        endpoint: Endpoint::Stats,
    },
];

async fn route(request: &Request, state: &AdminState) -> Response {
    let (label, response) = match find_route(request) {
        Ok(route) => (route.label(), handle(route.endpoint, request, state).await),
        Err(refusal) => refusal,
    };
    if request.path().starts_with("/api/") {
        state.count_api(label, response.status);
    }
    response
}

/// The route of the request's method and path, or the 404 or 405 and the route label
/// it is counted under.
fn find_route(request: &Request) -> Result<&'static Route, (&'static str, Response)> {
    let mut on_path = ROUTES.iter().filter(|r| r.matches(request.path())).peekable();
    let Some(first) = on_path.peek() else {
        return Err(("unknown", Response::text(404, "not found\n")));
    };
    let label = first.label();
    let mut allowed = Vec::new();
    for r in on_path {
        if r.method == request.head.method.as_str() {
            return Ok(r);
        }
        allowed.push(r.method);
    }
    let mut response = Response::text(405, "method not allowed\n");
    response.allow = Some(allowed.join(", "));
    Err((label, response))
}

async fn handle(endpoint: Endpoint, request: &Request, state: &AdminState) -> Response {
    let answer = match endpoint {
        Endpoint::Healthz => Ok(healthz()),
        Endpoint::Readyz => Ok(readyz(state)),
        Endpoint::Metrics => Ok(metrics(state)),
        Endpoint::Publish => api_publish(request, state).await,
        Endpoint::Send => api_send(request, state).await,
        Endpoint::PresenceUser => api_presence_user(request, state).await,
        Endpoint::PresenceRoom => api_presence_room(request, state).await,
        Endpoint::Disconnect => api_disconnect(request, state).await,
        Endpoint::Stats => api_stats(request, state),
    };
    answer.unwrap_or_else(|refusal| refusal)
}

/// The process is alive and its admin thread answers.
fn healthz() -> Response {
    Response::text(200, "ok\n")
}

/// Whether to send this process new clients: only once ready and not draining.
fn readyz(state: &AdminState) -> Response {
    // Relaxed: each flag is read on its own; a probe a moment late is harmless.
    if state.draining.load(Ordering::Relaxed) {
        Response::text(503, "draining\n")
    } else if state.ready.load(Ordering::Relaxed) {
        // A node that cannot reach Redis serves its own connections but cannot route
        // to the fleet: new clients are better sent to a node that can.
        let cluster_down = state.cluster.load(Ordering::Relaxed)
            && state.registry.snapshot().iter().any(|shard| shard.cluster.up == 0);
        if cluster_down {
            Response::text(503, "redis unavailable\n")
        } else {
            Response::text(200, "ready\n")
        }
    } else {
        Response::text(503, "starting\n")
    }
}

/// Prometheus text format 0.0.4 of the shards' latest published metrics.
fn metrics(state: &AdminState) -> Response {
    let shards = state.registry.snapshot();
    let process = ProcessInfo {
        rss_bytes: crate::sys::rss_bytes(),
        draining: state.draining.load(Ordering::Relaxed),
        nofile_limit: state.nofile_limit,
        shards: shards.len(),
        tls_reloads: state.tls.load(Ordering::Relaxed).then(|| state.registry.tls_reloads()),
    };
    let mut text = render(&shards, &process);
    let counts = state.api_requests.lock().unwrap_or_else(|e| e.into_inner()).clone();
    render_api_requests(
        &mut text,
        counts.iter().map(|(&(route, status), &n)| (route, status, n)),
    );
    Response {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body: text.into_bytes(),
        allow: None,
        challenge: false,
    }
}

// ---------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------

/// A response, always sent with `Content-Length` and `Connection: close`.
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// The methods a path allows, for 405.
    allow: Option<String>,
    /// 401: send `WWW-Authenticate: Bearer`.
    challenge: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            allow: None,
            challenge: false,
        }
    }

    fn json(status: u16, body: String) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: body.into_bytes(),
            allow: None,
            challenge: false,
        }
    }

    /// hyper's response (it adds `Content-Length` from the body).
    fn into_http(self) -> hyper::Response<Full<Bytes>> {
        let mut response = hyper::Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, self.content_type)
            .header(header::CACHE_CONTROL, "no-store")
            .header(header::CONNECTION, "close");
        if let Some(allow) = self.allow {
            response = response.header(header::ALLOW, allow);
        }
        if self.challenge {
            response = response.header(header::WWW_AUTHENTICATE, "Bearer realm=\"wsgate-api\"");
        }
        match response.body(Full::new(Bytes::from(self.body))) {
            Ok(response) => response,
            // Statuses are literals here and header values static or method names.
            Err(e) => unreachable!("admin response does not build: {e}"),
        }
    }
}

/// A whole response written straight to the socket, for the two answers hyper cannot
/// give: 503 before a request is read, and 408 when hyper gave up on the head.
fn raw_response(status: StatusCode, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        status.as_str(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ShardMetrics;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};

    fn state() -> Arc<AdminState> {
        Arc::new(AdminState::new(Arc::new(Registry::new(2)), 4096))
    }

    /// Binds 127.0.0.1:0 and serves `state` with `settings`.
    fn start(state: &Arc<AdminState>, settings: Option<Settings>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        match settings {
            Some(settings) => spawn_with(listener, Arc::clone(state), settings).unwrap(),
            None => spawn(listener, Arc::clone(state)).unwrap(),
        };
        addr
    }

    /// Sends `raw`, reads the whole response, returns (status, head, body).
    fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(raw).unwrap();
        read_response(&mut stream)
    }

    fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
        let mut response = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
                // A refusal may close with a reset after the response; what came is enough.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !response.is_empty() => break,
                Err(e) => panic!("reading the response: {e}"),
            }
        }
        let text = String::from_utf8(response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
        let status = head[9..12].parse().unwrap();
        (status, head.to_owned(), body.to_owned())
    }

    fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
    }

    /// Whether `head` has the header line `line` (`Name: value`), the name compared
    /// case-insensitively as HTTP does (hyper writes `Www-Authenticate`).
    fn has_header(head: &str, line: &str) -> bool {
        let (name, value) = line.split_once(": ").expect("a header line");
        head.lines().any(|l| {
            l.split_once(": ")
                .is_some_and(|(n, v)| n.eq_ignore_ascii_case(name) && v.starts_with(value))
        })
    }

    #[test]
    fn every_route_over_a_real_socket() {
        let state = state();
        let addr = start(&state, None);

        let (status, head, body) = get(addr, "/healthz");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        assert!(
            head.contains("Connection: close") && head.contains("Content-Length: 3"),
            "{head}"
        );
        assert_eq!(get(addr, "/healthz?verbose=1").0, 200);

        let (status, _, body) = get(addr, "/readyz");
        assert_eq!((status, body.as_str()), (503, "starting\n"));
        state.ready.store(true, Ordering::Relaxed);
        assert_eq!(get(addr, "/readyz").2, "ready\n");
        assert_eq!(get(addr, "/readyz").0, 200);
        state.draining.store(true, Ordering::Relaxed);
        let (status, _, body) = get(addr, "/readyz");
        assert_eq!((status, body.as_str()), (503, "draining\n"));

        let mut shard = ShardMetrics {
            connections: 7,
            ..ShardMetrics::default()
        };
        ShardMetrics::bump(&mut shard.handshake_failures, "draining");
        state.registry.publish(1, &shard);
        let (status, head, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
        for needle in [
            "wsgate_connections{shard=\"0\"} 0\n",
            "wsgate_connections{shard=\"1\"} 7\n",
            "wsgate_handshake_failures_total{shard=\"1\",reason=\"draining\"} 1\n",
            "wsgate_draining 1\n",
            "wsgate_shards 2\n",
            "wsgate_open_files_limit 4096\n",
            "wsgate_memory_per_connection_bytes ",
        ] {
            assert!(body.contains(needle), "missing {needle:?}");
        }

        assert_eq!(get(addr, "/nope").0, 404);
        let (status, head, _) = exchange(addr, b"POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
        assert_eq!(status, 405);
        assert!(head.contains("Allow: GET"), "{head}");
        assert_eq!(exchange(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").0, 405);
    }

    #[test]
    fn bad_requests_get_4xx() {
        let addr = start(&state(), None);
        assert_eq!(exchange(addr, b"hello world\r\n\r\n").0, 400);
        assert_eq!(exchange(addr, b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n").0, 400);
        // A head over 8 KiB: refused once the limit is reached, before the end of it.
        let big = format!(
            "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(ADMIN_MAX_REQUEST_HEAD_BYTES)
        );
        assert_eq!(exchange(addr, big.as_bytes()).0, 431);
        // Just under the limit is fine.
        let head = "GET /healthz HTTP/1.1\r\nX-Big: \r\n\r\n";
        let fits = format!(
            "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(ADMIN_MAX_REQUEST_HEAD_BYTES - head.len())
        );
        assert_eq!(fits.len(), ADMIN_MAX_REQUEST_HEAD_BYTES);
        assert_eq!(exchange(addr, fits.as_bytes()).0, 200);
        let many: String = (0..=ADMIN_MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            exchange(addr, format!("GET /healthz HTTP/1.1\r\n{many}\r\n").as_bytes()).0,
            431
        );
        let too_long = format!(
            "POST /api/x HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            ADMIN_MAX_BODY_BYTES + 1
        );
        assert_eq!(exchange(addr, too_long.as_bytes()).0, 413);
        // Chunked bodies are read (below); a transfer coding before `chunked` is not.
        assert_eq!(
            exchange(
                addr,
                b"POST /api/x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
            )
            .0,
            501
        );
        // A body within the limit is read, then the path decides.
        assert_eq!(
            exchange(addr, b"POST /api/x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").0,
            404
        );
    }

    #[test]
    fn slow_clients_time_out_and_the_bound_holds() {
        let settings = Settings {
            request_timeout: Duration::from_millis(300),
            max_concurrent: 1,
        };
        let addr = start(&state(), Some(settings));

        // A request that never completes: 408 after the deadline, even though bytes keep
        // arriving (the deadline covers the whole request, not each read).
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /hea").unwrap();
        // Meanwhile the only slot is taken: the next client is refused at once.
        let (status, _, body) = get(addr, "/healthz");
        assert_eq!((status, body.as_str()), (503, "admin listener busy\n"));
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(100));
        let _ = slow.write_all(b"l");
        let (status, _, _) = read_response(&mut slow);
        assert_eq!(status, 408);
        assert!(started.elapsed() < Duration::from_secs(2));

        // The slot comes back once the slow connection's thread ends.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if get(addr, "/healthz").0 == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "slot never freed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn a_client_sending_its_head_slowly_is_cut_by_the_header_timeout() {
        let settings = Settings {
            request_timeout: Duration::from_millis(300),
            max_concurrent: 8,
        };
        let addr = start(&state(), Some(settings));
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        // A byte every 20 ms of a head that never ends, for up to 3 s.
        let mut writer = slow.try_clone().unwrap();
        let trickle = std::thread::spawn(move || {
            let head = b"GET /healthz HTTP/1.1\r\nX-Slow: ";
            let mut bytes = head.iter().chain(std::iter::repeat(&b'a'));
            while started.elapsed() < Duration::from_secs(3) {
                if writer.write_all(&[*bytes.next().unwrap()]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // Meanwhile other clients are served at once.
        assert_eq!(get(addr, "/healthz").0, 200);
        let (status, _, body) = read_response(&mut slow);
        assert_eq!((status, body.as_str()), (408, "request timeout\n"));
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "not cut by the timeout: {elapsed:?}");
        trickle.join().unwrap();
    }

    #[test]
    fn framing_edge_cases_and_chunked_bodies() {
        let addr = start(&state(), None);
        // Two lengths that disagree: which one frames the body is ambiguous.
        let two_lengths = b"POST /api/x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
        assert_eq!(exchange(addr, two_lengths).0, 400);
        let same_twice = b"POST /api/x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(exchange(addr, same_twice).0, 404);
        // Content-Length with chunked: the chunked framing wins (RFC 9112 section 6.3),
        // so the answer comes at once rather than after waiting for 100 bytes, and the
        // request smuggled after the chunked body gets no answer of its own.
        let (status, head, body) = exchange(
            addr,
            b"POST /api/x HTTP/1.1\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
        );
        assert_eq!((status, body.as_str()), (404, "not found\n"));
        assert!(has_header(&head, "Connection: close"), "{head}");

        // A chunked body is read and limited while it streams.
        let chunked = |chunks: &[usize]| {
            let mut raw = b"POST /api/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for &n in chunks {
                raw.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                raw.extend(std::iter::repeat_n(b'a', n));
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"0\r\n\r\n");
            exchange(addr, &raw).0
        };
        let quarter = ADMIN_MAX_BODY_BYTES / 4;
        assert_eq!(chunked(&[quarter; 4]), 404, "at the limit: read, then the path decides");
        assert_eq!(chunked(&[quarter, quarter, quarter, quarter, 1]), 413);
        assert_eq!(chunked(&[ADMIN_MAX_BODY_BYTES + 1]), 413);
        // A broken chunk size.
        assert_eq!(
            exchange(
                addr,
                b"POST /api/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
            )
            .0,
            400
        );
    }

    // -----------------------------------------------------------------------------------
    // The backend API over a real socket
    // -----------------------------------------------------------------------------------

    use crate::msg::ConnId;
    use crate::msg::api::SinkError;
    use crate::msg::sim::Sim;
    use std::sync::mpsc;

    const KEY: &str = "test-key-0123456789abcdef";

    /// Hands requests to a thread that owns a two-shard simulation of the messaging
    /// core (`msg::sim`), as the server's shards would get them through their inbox.
    #[derive(Debug)]
    struct SimSink {
        tx: Mutex<Option<mpsc::Sender<(ShardId, ApiRequest)>>>,
        shards: usize,
    }

    impl SimSink {
        /// Stops the simulation thread (the admin threads keep the state, and the sink,
        /// for ever).
        fn finish(&self) {
            self.tx.lock().unwrap().take();
        }
    }

    impl ApiSink for SimSink {
        fn shards(&self) -> usize {
            self.shards
        }

        fn deliver(&self, shard: ShardId, request: ApiRequest) -> Result<(), SinkError> {
            assert!(usize::from(shard) < self.shards);
            let tx = self.tx.lock().unwrap();
            let tx = tx.as_ref().ok_or(SinkError::Unavailable)?;
            tx.send((shard, request)).map_err(|_| SinkError::Unavailable)
        }
    }

    /// Bob on both shards (one in room "lobby"), Alice on shard 1 in "lobby". Returns
    /// the sink and a channel that gets the simulation back when the sink is dropped.
    fn sim_sink(limits: &MsgLimits) -> (Arc<SimSink>, mpsc::Receiver<(Sim, [ConnId; 3])>) {
        let (tx, rx) = mpsc::channel::<(ShardId, ApiRequest)>();
        let (done_tx, done) = mpsc::channel();
        let limits = limits.clone();
        std::thread::spawn(move || {
            let mut sim = Sim::new(2, &limits);
            let conns = [sim.connect(0, "bob"), sim.connect(1, "bob"), sim.connect(1, "alice")];
            for (shard, conn) in [(0, conns[0]), (1, conns[2])] {
                let join = serde_json::json!({"type":"join","room":"lobby"}).to_string();
                sim.say_text(shard, conn, &join);
            }
            while let Ok((shard, request)) = rx.recv() {
                sim.api_request(shard, request);
            }
            let _ = done_tx.send((sim, conns));
        });
        let sink = SimSink {
            tx: Mutex::new(Some(tx)),
            shards: 2,
        };
        (Arc::new(sink), done)
    }

    fn api_state(sink: Arc<dyn ApiSink>, limits: &MsgLimits) -> Arc<AdminState> {
        let api = ApiState::new(Secret::from(KEY), sink, limits);
        Arc::new(AdminState::new(Arc::new(Registry::new(2)), 4096).with_api(api))
    }

    fn call_api(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String, Value) {
        let auth = key
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, head, body) = exchange(addr, raw.as_bytes());
        let json = serde_json::from_str(&body).unwrap_or(Value::Null);
        (status, head, json)
    }

    use serde_json::{Value, json};

    #[test]
    fn api_end_to_end_over_a_socket_and_the_simulated_shards() {
        let limits = MsgLimits::default();
        let (sink, done) = sim_sink(&limits);
        let state = api_state(sink.clone(), &limits);
        let addr = start(&state, None);
        let post = |path: &str, body: Value| call_api(addr, "POST", path, Some(KEY), &body.to_string());
        let get = |path: &str| call_api(addr, "GET", path, Some(KEY), "");

        let (status, head, body) = post("/api/publish", json!({"room":"lobby","body":{"text":"hi"}}));
        assert_eq!(status, 200, "{body}");
        assert!(head.contains("Content-Type: application/json"), "{head}");
        assert_eq!(body["room"], "lobby");
        assert_eq!(body["seq"], 1);
        let epoch = body["epoch"].as_u64().unwrap();
        assert!(epoch > 0);
        let (_, _, body) = post("/api/publish", json!({"room":"lobby","body":[1, 2]}));
        assert_eq!((body["seq"].as_u64(), body["epoch"].as_u64()), (Some(2), Some(epoch)));

        let (status, _, body) = post("/api/send", json!({"to":"bob","body":"ping"}));
        assert_eq!(status, 200, "{body}");
        assert_eq!((body["to"].as_str(), body["seq"].as_u64()), (Some("bob"), Some(1)));
        assert_eq!(body["online"], true);
        let (_, _, body) = post("/api/send", json!({"to":"nobody","body":null}));
        assert_eq!((body["seq"].as_u64(), body["online"].as_bool()), (Some(1), Some(false)));

        let (status, _, body) = get("/api/presence/user/bob");
        assert_eq!(status, 200);
        assert_eq!(body, json!({"user":"bob","online":true,"connections":2}));
        let (_, _, body) = get("/api/presence/room/lobby");
        assert_eq!(
            body,
            json!({"room":"lobby","members":2,"connections":2,"users":["alice","bob"]})
        );
        // Percent-encoded path parameters.
        let (status, _, body) = get("/api/presence/user/b%C3%B6b%2F1");
        assert_eq!(status, 200);
        assert_eq!(body["user"], "b\u{f6}b/1");
        assert_eq!(get("/api/presence/user/%zz").0, 400);
        assert_eq!(get("/api/presence/user/").0, 404);

        let (status, _, body) = post("/api/disconnect", json!({"user":"bob"}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"user":"bob","closed":2}));
        let (_, _, body) = get("/api/presence/user/bob");
        assert_eq!(body["online"], false);
        let (_, _, body) = get("/api/presence/room/lobby");
        assert_eq!(body["members"], 1);
        let (_, _, body) = post("/api/disconnect", json!({"user":"bob"}));
        assert_eq!(body["closed"], 0);

        // Stats: from the registry (what the shards last published).
        state.registry.publish(
            0,
            &ShardMetrics {
                connections: 3,
                msg_owned_users_online: 2,
                ..ShardMetrics::default()
            },
        );
        let mut one = ShardMetrics {
            msg_owned_users_online: 3,
            msg_owned_rooms: 2,
            ..ShardMetrics::default()
        };
        one.msg.publishes_accepted = 11;
        state.registry.publish(1, &one);
        let (status, _, body) = get("/api/stats");
        assert_eq!(status, 200);
        assert_eq!(body["connections"], 3);
        assert_eq!(body["users_online"], 5);
        assert_eq!(body["rooms"], 2);
        assert_eq!(body["messages"]["published"], 11);
        assert_eq!(body["shards"], 2);

        // The counter family.
        let (_, _, text) = super::tests::get(addr, "/metrics");
        for needle in [
            "wsgate_api_requests_total{route=\"/api/publish\",status=\"200\"} 2\n",
            "wsgate_api_requests_total{route=\"/api/presence/user\",status=\"400\"} 1\n",
            "wsgate_api_requests_total{route=\"unknown\",status=\"404\"} 1\n",
            "wsgate_api_requests_total{route=\"/api/disconnect\",status=\"200\"} 2\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }

        // What the clients saw: room messages and the inbox message from the server
        // ("from": null), then close code 4000.
        sink.finish();
        let (sim, [bob0, bob1, alice]) = done.recv_timeout(Duration::from_secs(10)).unwrap();
        let room_msgs: Vec<&Value> = sim.frames(alice).iter().filter(|f| f["type"] == "room_msg").collect();
        assert_eq!(room_msgs.len(), 2);
        assert_eq!(room_msgs[0]["from"], Value::Null);
        assert_eq!(room_msgs[0]["body"], json!({"text":"hi"}));
        for bob in [bob0, bob1] {
            let msg: Vec<&Value> = sim.frames(bob).iter().filter(|f| f["type"] == "msg").collect();
            assert_eq!(msg, [&json!({"type":"msg","seq":1,"from":null,"body":"ping"})]);
            assert_eq!(sim.closed(bob), Some(4000));
        }
        assert_eq!(sim.closed(alice), None);
    }

    #[test]
    fn api_needs_the_key_and_checks_every_field() {
        let limits = MsgLimits {
            max_payload_bytes: 64,
            max_room_name_bytes: 16,
            ..MsgLimits::default()
        };
        let (sink, _done) = sim_sink(&limits);
        let state = api_state(sink, &limits);
        let addr = start(&state, None);
        let body = r#"{"room":"r","body":1}"#;

        let (status, head, json) = call_api(addr, "POST", "/api/publish", None, body);
        assert_eq!(status, 401);
        assert!(has_header(&head, "WWW-Authenticate: Bearer"), "{head}");
        assert_eq!(json["error"], "unauthorized");
        assert!(!head.contains(KEY) && !json.to_string().contains(KEY));
        assert_eq!(
            call_api(addr, "POST", "/api/publish", Some("test-key-0123456789abcdeX"), body).0,
            401
        );
        assert_eq!(call_api(addr, "POST", "/api/publish", Some(&KEY[..10]), body).0, 401);
        assert_eq!(call_api(addr, "GET", "/api/stats", Some(&format!("{KEY}x")), "").0, 401);
        let raw = format!("GET /api/stats HTTP/1.1\r\nauthorization: bearer   {KEY}  \r\n\r\n");
        assert_eq!(exchange(addr, raw.as_bytes()).0, 200, "scheme and spaces are lenient");
        let raw = format!("GET /api/stats HTTP/1.1\r\nAuthorization: Basic {KEY}\r\n\r\n");
        assert_eq!(exchange(addr, raw.as_bytes()).0, 401);

        let bad = |path: &str, body: &str| call_api(addr, "POST", path, Some(KEY), body);
        for (path, body, status, code) in [
            ("/api/publish", "{", 400, "bad_request"),
            ("/api/publish", "", 400, "bad_request"),
            ("/api/publish", r#"{"room":"r"}"#, 400, "bad_request"),
            ("/api/publish", r#"{"room":"r","body":1,"extra":2}"#, 400, "bad_request"),
            ("/api/publish", r#"{"room":5,"body":1}"#, 400, "bad_request"),
            ("/api/publish", r#"{"room":"","body":1}"#, 400, "invalid_name"),
            ("/api/publish", r#"{"room":"a\u0001","body":1}"#, 400, "invalid_name"),
            (
                "/api/publish",
                r#"{"room":"seventeen-bytes!!","body":1}"#,
                413,
                "too_large",
            ),
            (
                "/api/send",
                r#"{"to":"u","body":"0123456789012345678901234567890123456789012345678901234567890123"}"#,
                413,
                "too_large",
            ),
            ("/api/send", r#"{"room":"u","body":1}"#, 400, "bad_request"),
            ("/api/disconnect", r#"{"user":""}"#, 400, "invalid_name"),
            ("/api/disconnect", r#"[]"#, 400, "bad_request"),
        ] {
            let (got, _, json) = bad(path, body);
            assert_eq!(
                (got, json["error"].as_str()),
                (status, Some(code)),
                "{path} {body}: {json}"
            );
            assert!(json["detail"].as_str().is_some_and(|d| !d.is_empty()));
        }
        let (_, _, json) = bad("/api/publish", r#"{"room":"r"}"#);
        assert!(
            json["detail"].as_str().unwrap().contains("missing field `body`"),
            "{json}"
        );
        // A body exactly at the limit is fine.
        let at_limit = format!(r#"{{"to":"u","body":"{}"}}"#, "a".repeat(62));
        assert_eq!(bad("/api/send", &at_limit).0, 200);
        // Methods and unknown API paths.
        let (status, head, _) = call_api(addr, "GET", "/api/publish", Some(KEY), "");
        assert_eq!(status, 405);
        assert!(head.contains("Allow: POST"), "{head}");
        assert_eq!(call_api(addr, "POST", "/api/presence/user/x", Some(KEY), "").0, 405);
        assert_eq!(call_api(addr, "GET", "/api/nope", Some(KEY), "").0, 404);
    }

    #[test]
    fn api_off_without_a_key() {
        let state = state();
        let addr = start(&state, None);
        for (method, path) in [
            ("POST", "/api/publish"),
            ("POST", "/api/send"),
            ("GET", "/api/presence/user/u"),
            ("GET", "/api/presence/room/r"),
            ("POST", "/api/disconnect"),
            ("GET", "/api/stats"),
        ] {
            let (status, _, json) = call_api(addr, method, path, Some(KEY), "{}");
            assert_eq!((status, json["error"].as_str()), (404, Some("api_disabled")), "{path}");
        }
        let (_, _, text) = get(addr, "/metrics");
        assert!(text.contains("wsgate_api_requests_total{route=\"/api/stats\",status=\"404\"} 1\n"));
    }

    #[test]
    fn api_reads_chunked_bodies_and_takes_only_a_single_token68() {
        let limits = MsgLimits::default();
        let addr = start(&api_state(Arc::new(BrokenSink::Down), &limits), None);
        // The chunked body is decoded and parsed: the request gets as far as the shards
        // (503: none running), where a missing body would be 400.
        let body = r#"{"room":"r","body":1}"#;
        let raw = format!(
            "POST /api/publish HTTP/1.1\r\nAuthorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        let (status, _, json) = exchange(addr, raw.as_bytes());
        let json: Value = serde_json::from_str(&json).unwrap();
        assert_eq!((status, json["error"].as_str()), (503, Some("unavailable")), "{json}");

        // A key with a space in it cannot be presented: `Bearer a b` is no token at all.
        let spaced = ApiState::new(Secret::from("a b"), Arc::new(BrokenSink::Down), &limits);
        let state = Arc::new(AdminState::new(Arc::new(Registry::new(2)), 4096).with_api(spaced));
        let addr = start(&state, None);
        let (status, head, json) = call_api(addr, "GET", "/api/stats", Some("a b"), "");
        assert_eq!((status, json["error"].as_str()), (401, Some("unauthorized")));
        assert!(has_header(&head, "WWW-Authenticate: Bearer"), "{head}");
    }

    /// A sink whose shards keep requests unanswered, drop them, or are not there.
    #[derive(Debug)]
    enum BrokenSink {
        Silent(Mutex<Vec<ApiRequest>>),
        Dropping,
        Down,
        Overloaded,
    }

    impl ApiSink for BrokenSink {
        fn shards(&self) -> usize {
            match self {
                Self::Down => 0,
                _ => 2,
            }
        }

        fn deliver(&self, _: ShardId, request: ApiRequest) -> Result<(), SinkError> {
            match self {
                Self::Silent(kept) => kept.lock().unwrap().push(request),
                Self::Dropping => drop(request),
                Self::Down => return Err(SinkError::Unavailable),
                Self::Overloaded => request.answer(ApiReply::Overloaded),
            }
            Ok(())
        }
    }

    #[test]
    fn api_answers_504_when_shards_are_slow_and_503_when_they_are_gone() {
        let limits = MsgLimits::default();
        for (sink, status, code) in [
            (BrokenSink::Silent(Mutex::new(Vec::new())), 504, "timeout"),
            (BrokenSink::Dropping, 503, "unavailable"),
            (BrokenSink::Down, 503, "unavailable"),
            (BrokenSink::Overloaded, 503, "overloaded"),
        ] {
            let api =
                ApiState::new(Secret::from(KEY), Arc::new(sink), &limits).with_timeout(Duration::from_millis(200));
            let state = Arc::new(AdminState::new(Arc::new(Registry::new(2)), 4096).with_api(api));
            let addr = start(&state, None);
            let started = Instant::now();
            let (got, _, json) = call_api(addr, "POST", "/api/send", Some(KEY), r#"{"to":"u","body":1}"#);
            assert_eq!((got, json["error"].as_str()), (status, Some(code)), "{json}");
            if code == "overloaded" {
                continue;
            }
            let (got, _, json) = call_api(addr, "POST", "/api/disconnect", Some(KEY), r#"{"user":"u"}"#);
            assert_eq!((got, json["error"].as_str()), (status, Some(code)), "{json}");
            assert!(started.elapsed() < Duration::from_secs(3));
        }
    }

    #[test]
    fn key_comparison_and_helpers() {
        assert!(constant_time_eq(b"abcdefgh", b"abcdefgh"));
        assert!(!constant_time_eq(b"abcdefgX", b"abcdefgh"));
        assert!(!constant_time_eq(b"abcdefghabcdefgh", b"abcdefgh"), "a repeated key");
        assert!(!constant_time_eq(b"", b"abcdefgh"));
        assert!(!constant_time_eq(b"", b""));
        assert_eq!(bearer_token(b"Bearer xyz"), Some(&b"xyz"[..]));
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Token xyz"), None);
        assert_eq!(
            bearer_token(b"bearer   a.b_c-d~e+f/g==  "),
            Some(&b"a.b_c-d~e+f/g=="[..])
        );
        for value in [
            &b"Bearer a b"[..],
            b"Bearer a,b",
            b"Bearer \"ab\"",
            b"Bearer =",
            b"Bearer a=b",
            b"Bearer\tab",
        ] {
            assert_eq!(bearer_token(value), None, "{}", String::from_utf8_lossy(value));
        }
        assert_eq!(bearer_token(b"Bearer caf\xc3\xa9"), None);
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b+c"));
        assert_eq!(percent_decode("%e2%82%ac").as_deref(), Some("\u{20ac}"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%2B%2b").as_deref(), Some("++"));
        // Exactly two hex digits: no sign, no short escape.
        for bad in ["%+f", "%-1", "%f", "%fg", "% f", "%\u{e9}0"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
        let debug = format!(
            "{:?}",
            ApiState::new(Secret::from(KEY), Arc::new(BrokenSink::Down), &MsgLimits::default())
        );
        assert!(!debug.contains(KEY), "{debug}");
    }
}
