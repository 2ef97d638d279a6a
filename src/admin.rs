//! The admin listener: `/healthz`, `/readyz` and `/metrics` over plain HTTP/1.1.
//!
//! Admin traffic is a probe or a scrape every few seconds, so it runs on ordinary std
//! threads, away from the shard cores and their io_uring event loops: a slow scraper can
//! never delay a WebSocket frame. `main` binds the admin address, builds an
//! [`AdminState`] sharing the metrics [`Registry`] with the shards, and calls [`spawn`].
//! The shards publish into the registry; `main` flips [`AdminState::ready`] once every
//! shard listens and [`AdminState::draining`] on SIGTERM.
//!
//! # Thread model
//!
//! One accept thread hands each connection to a thread of its own, at most
//! [`ADMIN_MAX_CONCURRENT`] at once. One thread per connection, rather than serving them
//! in turn, because a client that connects and sends nothing would otherwise hold every
//! health probe behind it for the whole read timeout, and orchestrators restart
//! processes whose probes time out. Past the bound the accept thread answers 503 itself
//! and closes. Every response carries `Connection: close`: there is no keep-alive to
//! track, and a scrape costs one connection either way.
//!
//! # Routes
//!
//! Requests are parsed into a `Request` (method, path, query, headers, a body bounded by
//! [`ADMIN_MAX_BODY_BYTES`]) and dispatched through the `ROUTES` table by method and
//! path; a path in the table with another method gets 405 and an `Allow` header, any
//! other path 404. A new endpoint such as `POST /api/...` is one row in `ROUTES` and one
//! handler function.
//!
//! # The backend API
//!
//! `/api/...` (see the README's "Backend API"): application backends publish to rooms,
//! send to users, ask for presence, disconnect users and read totals. Off unless an
//! API key is configured ([`ApiState`]); every call needs `Authorization: Bearer <key>`
//! (compared in constant time; the key is never logged or echoed). JSON in and out;
//! bodies bounded by [`ADMIN_MAX_BODY_BYTES`] and fields by the messaging limits.
//!
//! The admin thread never touches shard state: it validates the request and hands an
//! [`ApiRequest`] to the owner shard of the key through an [`ApiSink`], then waits up
//! to [`API_REPLY_TIMEOUT`] for the answer on the request's channel (504 after that).
//! Requests are counted in `wsgate_api_requests_total{route,status}`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::Secret;
use crate::metrics::{ProcessInfo, Registry, render, render_api_requests};
use crate::msg::api::{ApiOp, ApiReply, ApiRequest, ApiSink};
use crate::msg::protocol::check_name;
use crate::msg::{KeyKind, MsgLimits, ShardId, owner_of};

/// Bytes of request line and headers of one admin request. Beyond it: 431 and close.
/// Probes and scrapers send a few hundred bytes; 8 KiB matches common HTTP servers.
pub const ADMIN_MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// Headers of one admin request (the parser's fixed array). Beyond it: 431.
pub const ADMIN_MAX_HEADERS: usize = 32;
/// Time a client has to deliver its whole request (head and body), from accept. Beyond
/// it: 408 and close. A deadline for the whole request rather than per read, so a client
/// trickling a byte at a time cannot hold a thread longer than this.
pub const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Request body bytes (`Content-Length`) of the API routes. Beyond it: 413.
pub const ADMIN_MAX_BODY_BYTES: usize = 64 * 1024;
/// Admin connections served at once (each on its own thread). Beyond it the accept
/// thread answers 503 at once and closes, so stuck clients cost at most this many
/// threads.
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

/// What the admin endpoints report, shared between `main`, the shards and the admin
/// threads.
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
/// the process exits. Fails only if the thread cannot be started or the listener cannot
/// be switched to blocking mode.
pub fn spawn(listener: TcpListener, state: Arc<AdminState>) -> io::Result<JoinHandle<()>> {
    spawn_with(listener, state, Settings::default())
}

/// The limits the server runs with; tests shorten them.
#[derive(Clone, Copy, Debug)]
struct Settings {
    request_timeout: Duration,
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

fn spawn_with(listener: TcpListener, state: Arc<AdminState>, settings: Settings) -> io::Result<JoinHandle<()>> {
    // The accept loop blocks; a non-blocking listener would make it spin.
    listener.set_nonblocking(false)?;
    std::thread::Builder::new()
        .name("wsgate-admin".to_owned())
        .spawn(move || accept_loop(&listener, &state, settings))
}

/// Decrements the count of active admin connections when a connection's thread ends,
/// panic included, so a panicking handler cannot leak a slot.
struct ActiveSlot(Arc<AtomicUsize>);

impl Drop for ActiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept_loop(listener: &TcpListener, state: &Arc<AdminState>, settings: Settings) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => continue,
            Err(_) => {
                std::thread::sleep(ADMIN_ACCEPT_BACKOFF);
                continue;
            }
        };
        // Only this thread increments, so the count can only fall between the check and
        // the increment: the bound holds.
        if active.load(Ordering::Acquire) >= settings.max_concurrent {
            refuse_busy(stream);
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let slot = ActiveSlot(Arc::clone(&active));
        let state = Arc::clone(state);
        let spawned = std::thread::Builder::new()
            .name("wsgate-admin-conn".to_owned())
            .spawn(move || {
                let _slot = slot;
                serve_connection(stream, &state, settings);
            });
        if spawned.is_err() {
            // The closure (stream and slot) was dropped: the client sees a close, the
            // slot is freed. Out of threads is like out of descriptors: back off.
            std::thread::sleep(ADMIN_ACCEPT_BACKOFF);
        }
    }
}

/// Answers 503 from the accept thread, without waiting for the request.
fn refuse_busy(mut stream: TcpStream) {
    // Non-blocking throughout, so the accept thread never waits on this client: the send
    // buffer of a fresh socket takes a small response at once. Whatever part of the
    // request has arrived is read first, as closing with unread bytes sends a reset.
    let _ = stream.set_nonblocking(true);
    let _ = stream.read(&mut [0u8; 4096]);
    let _ = stream.write_all(&Response::text(503, "admin listener busy\n").to_bytes());
    let _ = stream.shutdown(Shutdown::Write);
}

fn serve_connection(mut stream: TcpStream, state: &AdminState, settings: Settings) {
    let deadline = Instant::now() + settings.request_timeout;
    let _ = stream.set_nonblocking(false);
    // The same bound for writing, so a client that stops reading cannot hold the thread.
    let _ = stream.set_write_timeout(Some(settings.request_timeout));
    let response = match read_request(&mut stream, deadline) {
        Ok(request) => route(&request, state),
        Err(ReadError::Respond(response)) => response,
        // The client went away or the socket failed: nobody to answer.
        Err(ReadError::Gone) => return,
    };
    if stream.write_all(&response.to_bytes()).is_ok() {
        linger(&mut stream);
    }
}

/// Half-closes and reads until the client closes (bounded by [`ADMIN_LINGER`] and
/// [`ADMIN_LINGER_MAX_BYTES`]), so our close does not reset the connection under the
/// response.
fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let end = Instant::now() + ADMIN_LINGER;
    let mut discarded = 0;
    let mut sink = [0u8; 4096];
    while discarded < ADMIN_LINGER_MAX_BYTES {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// One parsed admin request, owned, handed to a route handler.
#[derive(Debug)]
struct Request {
    /// `GET`, `POST`, ... as sent (methods are case-sensitive).
    method: String,
    /// The target before any `?`.
    path: String,
    /// The target after the `?`, if any.
    #[expect(dead_code, reason = "no route takes a query yet")]
    query: Option<String>,
    /// Header names and values as sent, in order.
    headers: Vec<(String, Vec<u8>)>,
    /// The body, `Content-Length` bytes, at most [`ADMIN_MAX_BODY_BYTES`].
    body: Vec<u8>,
}

/// Why no [`Request`] came out.
enum ReadError {
    /// The request was bad, too big or too slow: answer with this and close.
    Respond(Response),
    /// The client closed or the socket failed before a whole request arrived.
    Gone,
}

/// Reads one request head (and body, if any) by `deadline`.
fn read_request(stream: &mut TcpStream, deadline: Instant) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let (mut request, head_len, content_length) = loop {
        // Never read past the head limit: a complete head must fit in it.
        let room = ADMIN_MAX_REQUEST_HEAD_BYTES - buf.len();
        read_some(stream, &mut buf, room.min(4096), deadline)?;
        let mut headers = [httparse::EMPTY_HEADER; ADMIN_MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let (request, content_length) = own_request(&parsed)?;
                break (request, head_len, content_length);
            }
            Ok(httparse::Status::Partial) if buf.len() < ADMIN_MAX_REQUEST_HEAD_BYTES => {}
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return Err(ReadError::Respond(Response::text(
                    431,
                    "request header fields too large\n",
                )));
            }
            Err(_) => return Err(ReadError::Respond(Response::text(400, "malformed request\n"))),
        }
    };
    let mut body = buf.split_off(head_len);
    while body.len() < content_length {
        let room = content_length - body.len();
        read_some(stream, &mut body, room.min(16 * 1024), deadline)?;
    }
    body.truncate(content_length);
    request.body = body;
    Ok(request)
}

/// Appends up to `max` bytes from `stream` to `buf`, waiting at most until `deadline`.
fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>, max: usize, deadline: Instant) -> Result<(), ReadError> {
    let timeout = || ReadError::Respond(Response::text(408, "request timeout\n"));
    let start = buf.len();
    buf.resize(start + max, 0);
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(timeout());
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            break Err(ReadError::Gone);
        }
        match stream.read(&mut buf[start..]) {
            Ok(0) => break Err(ReadError::Gone),
            Ok(n) => break Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break Err(timeout()),
            Err(_) => break Err(ReadError::Gone),
        }
    };
    buf.truncate(start + *result.as_ref().unwrap_or(&0));
    result.map(|_| ())
}

/// Copies what the handlers need out of the parser's borrowed view, and finds the body
/// length.
fn own_request(parsed: &httparse::Request<'_, '_>) -> Result<(Request, usize), ReadError> {
    let respond = |status, body| Err(ReadError::Respond(Response::text(status, body)));
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return respond(400, "malformed request\n");
    };
    let mut content_length = 0;
    for header in parsed.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return respond(501, "chunked bodies are not supported; send Content-Length\n");
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
            else {
                return respond(400, "invalid Content-Length\n");
            };
            if n > ADMIN_MAX_BODY_BYTES {
                return respond(413, "request body too large\n");
            }
            content_length = n;
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    let request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query,
        headers: parsed
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect(),
        body: Vec::new(),
    };
    Ok((request, content_length))
}

// ---------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------

/// One endpoint: a method and a path, and the function that answers it.
struct Route {
    method: &'static str,
    /// The exact path, or with `prefix` the path's beginning (ending in `/`; the rest,
    /// not empty, is the handler's parameter).
    path: &'static str,
    prefix: bool,
    handler: fn(&Request, &AdminState) -> Response,
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
        handler: healthz,
    },
    Route {
        method: "GET",
        path: "/readyz",
        prefix: false,
        handler: readyz,
    },
    Route {
        method: "GET",
        path: "/metrics",
        prefix: false,
        handler: metrics,
    },
    Route {
        method: "POST",
        path: "/api/publish",
        prefix: false,
        handler: api_publish,
    },
    Route {
        method: "POST",
        path: "/api/send",
        prefix: false,
        handler: api_send,
    },
    Route {
        method: "GET",
        path: "/api/presence/user/",
        prefix: true,
        handler: api_presence_user,
    },
    Route {
        method: "GET",
        path: "/api/presence/room/",
        prefix: true,
        handler: api_presence_room,
    },
    Route {
        method: "POST",
        path: "/api/disconnect",
        prefix: false,
        handler: api_disconnect,
    },
    Route {
        method: "GET",
        path: "/api/stats",
        prefix: false,
        handler: api_stats,
    },
];

fn route(request: &Request, state: &AdminState) -> Response {
    let (label, response) = route_inner(request, state);
    if request.path.starts_with("/api/") {
        state.count_api(label, response.status);
    }
    response
}

/// The response and the route label it is counted under.
fn route_inner(request: &Request, state: &AdminState) -> (&'static str, Response) {
    let mut on_path = ROUTES.iter().filter(|r| r.matches(&request.path)).peekable();
    let Some(first) = on_path.peek() else {
        return ("unknown", Response::text(404, "not found\n"));
    };
    let label = first.label();
    let mut allowed = Vec::new();
    for r in on_path {
        if r.method == request.method {
            return (label, (r.handler)(request, state));
        }
        allowed.push(r.method);
    }
    let mut response = Response::text(405, "method not allowed\n");
    response.allow = Some(allowed.join(", "));
    (label, response)
}

/// The process is alive and its admin thread answers.
fn healthz(_: &Request, _: &AdminState) -> Response {
    Response::text(200, "ok\n")
}

/// Whether to send this process new clients: only once ready and not draining.
fn readyz(_: &Request, state: &AdminState) -> Response {
    // Relaxed: each flag is read on its own; a probe a moment late is harmless.
    if state.draining.load(Ordering::Relaxed) {
        Response::text(503, "draining\n")
    } else if state.ready.load(Ordering::Relaxed) {
        Response::text(200, "ready\n")
    } else {
        Response::text(503, "starting\n")
    }
}

/// Prometheus text format 0.0.4 of the shards' latest published metrics.
fn metrics(_: &Request, state: &AdminState) -> Response {
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
// The backend API
// ---------------------------------------------------------------------------------------

/// Runs `handler` if the API is on and the request carries the key; else 404 or 401.
fn with_api(request: &Request, state: &AdminState, handler: impl FnOnce(&ApiState) -> Response) -> Response {
    let Some(api) = &state.api else {
        return api_error(404, "api_disabled", "API disabled: configure api_key or api_key_file");
    };
    let presented = request
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, value)| bearer_token(value));
    match presented {
        Some(token) if constant_time_eq(token, api.key.expose()) => handler(api),
        _ => {
            let mut response = api_error(
                401,
                "unauthorized",
                "missing or wrong API key (Authorization: Bearer <key>)",
            );
            response.challenge = true;
            response
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = b"bearer ";
    if value.len() <= scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return None;
    }
    Some(value[scheme.len()..].trim_ascii())
}

/// Compares a presented token with the key in time that depends only on the token's
/// length, never on where the first difference is or on the key.
fn constant_time_eq(presented: &[u8], key: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    let mut diff = u8::from(presented.len() != key.len());
    for (i, &b) in presented.iter().enumerate() {
        diff |= b ^ key[i % key.len()];
    }
    std::hint::black_box(diff) == 0
}

/// `{"error": code, "detail": detail}` with `status`.
fn api_error(status: u16, code: &str, detail: &str) -> Response {
    Response::json(
        status,
        serde_json::json!({ "error": code, "detail": detail }).to_string(),
    )
}

/// Parses a JSON body into `T` (unknown fields refused) or answers 400.
fn json_body<'a, T: Deserialize<'a>>(request: &'a Request) -> Result<T, Response> {
    serde_json::from_slice(&request.body).map_err(|e| api_error(400, "bad_request", &format!("invalid JSON body: {e}")))
}

/// Checks a user id or room from the API like the client protocol does (400 or 413).
fn check_field(value: &str, field: &str, max: usize) -> Result<(), Response> {
    check_name(value, field, max).map_err(|(code, detail)| {
        let status = if code.label() == "too_large" { 413 } else { 400 };
        api_error(status, code.label(), &detail)
    })
}

fn check_body(api: &ApiState, body: &RawValue) -> Result<(), Response> {
    if body.get().len() > api.max_payload_bytes {
        return Err(api_error(
            413,
            "too_large",
            &format!("body is over {} bytes", api.max_payload_bytes),
        ));
    }
    Ok(())
}

/// Hands `op` to `shard` and waits for the answer (503 if no shard takes it, 504 if it
/// does not answer in time).
fn call(api: &ApiState, shard: ShardId, op: ApiOp) -> Result<ApiReply, Response> {
    let (reply, answer) = sync_channel(1);
    if api.sink.deliver(shard, ApiRequest { op, reply }).is_err() {
        return Err(unavailable());
    }
    match answer.recv_timeout(api.timeout) {
        Ok(ApiReply::Overloaded) => Err(api_error(503, "overloaded", "the gateway is overloaded; retry")),
        Ok(reply) => Ok(reply),
        Err(RecvTimeoutError::Timeout) => Err(api_error(504, "timeout", "the shard did not answer in time")),
        // The shard dropped the request unanswered (stopping).
        Err(RecvTimeoutError::Disconnected) => Err(unavailable()),
    }
}

fn unavailable() -> Response {
    api_error(503, "unavailable", "messaging is not running")
}

/// The owner shard of `key`, or 503 when no shard runs.
fn owner(api: &ApiState, kind: KeyKind, key: &str) -> Result<ShardId, Response> {
    match api.sink.shards() {
        0 => Err(unavailable()),
        n => Ok(owner_of(kind, key, n)),
    }
}

fn reply_json(result: Result<ApiReply, Response>) -> Response {
    match result {
        Ok(reply) => Response::json(200, reply.to_json()),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    room: String,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// `POST /api/publish {"room", "body"}` → `{"room", "epoch", "seq"}`.
fn api_publish(request: &Request, state: &AdminState) -> Response {
    with_api(request, state, |api| {
        let run = || {
            let parsed: PublishBody<'_> = json_body(request)?;
            check_field(&parsed.room, "room", api.max_room_name_bytes)?;
            check_body(api, parsed.body)?;
            let shard = owner(api, KeyKind::Room, &parsed.room)?;
            let op = ApiOp::Publish {
                room: parsed.room.as_str().into(),
                body: parsed.body.get().into(),
            };
            call(api, shard, op)
        };
        reply_json(run())
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody<'a> {
    to: String,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// `POST /api/send {"to", "body"}` → `{"to", "epoch", "seq", "online"}`.
fn api_send(request: &Request, state: &AdminState) -> Response {
    with_api(request, state, |api| {
        let run = || {
            let parsed: SendBody<'_> = json_body(request)?;
            check_field(&parsed.to, "to", api.max_user_id_bytes)?;
            check_body(api, parsed.body)?;
            let shard = owner(api, KeyKind::User, &parsed.to)?;
            let op = ApiOp::Send {
                to: parsed.to.as_str().into(),
                body: parsed.body.get().into(),
            };
            call(api, shard, op)
        };
        reply_json(run())
    })
}

/// The percent-decoded path parameter after `prefix`, checked as a user id or room.
fn path_param(request: &Request, prefix: &str, field: &str, max: usize) -> Result<String, Response> {
    let raw = request.path.strip_prefix(prefix).unwrap_or_default();
    let value = percent_decode(raw).ok_or_else(|| {
        api_error(
            400,
            "bad_request",
            &format!("{field} is not valid percent-encoded UTF-8"),
        )
    })?;
    check_field(&value, field, max)?;
    Ok(value)
}

/// Decodes `%XX` escapes (a path segment: `+` is a plus). `None` for a bad escape or
/// bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `GET /api/presence/user/{id}` → `{"user", "online", "connections"}`.
fn api_presence_user(request: &Request, state: &AdminState) -> Response {
    with_api(request, state, |api| {
        let run = || {
            let user = path_param(request, "/api/presence/user/", "user", api.max_user_id_bytes)?;
            let shard = owner(api, KeyKind::User, &user)?;
            call(api, shard, ApiOp::PresenceUser { user: user.into() })
        };
        reply_json(run())
    })
}

/// `GET /api/presence/room/{room}` → `{"room", "members", "connections", "users"?}`.
fn api_presence_room(request: &Request, state: &AdminState) -> Response {
    with_api(request, state, |api| {
        let run = || {
            let room = path_param(request, "/api/presence/room/", "room", api.max_room_name_bytes)?;
            let shard = owner(api, KeyKind::Room, &room)?;
            call(api, shard, ApiOp::PresenceRoom { room: room.into() })
        };
        reply_json(run())
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user: String,
}

/// `POST /api/disconnect {"user"}` → `{"user", "closed"}`: every shard closes the
/// user's connections (close code 4000) and says how many.
fn api_disconnect(request: &Request, state: &AdminState) -> Response {
    with_api(request, state, |api| {
        let run = || -> Result<Response, Response> {
            let parsed: DisconnectBody = json_body(request)?;
            check_field(&parsed.user, "user", api.max_user_id_bytes)?;
            let shards = api.sink.shards();
            if shards == 0 {
                return Err(unavailable());
            }
            let (reply, answers) = sync_channel(shards);
            let user: crate::msg::Key = parsed.user.as_str().into();
            for shard in 0..shards {
                let op = ApiOp::Disconnect { user: user.clone() };
                let request = ApiRequest {
                    op,
                    reply: reply.clone(),
                };
                if api.sink.deliver(shard as ShardId, request).is_err() {
                    return Err(unavailable());
                }
            }
            drop(reply);
            let deadline = Instant::now() + api.timeout;
            let mut closed = 0;
            for _ in 0..shards {
                let left = deadline.saturating_duration_since(Instant::now());
                match answers.recv_timeout(left) {
                    Ok(ApiReply::Disconnected { closed: n, .. }) => closed += n,
                    Ok(_) | Err(RecvTimeoutError::Disconnected) => return Err(unavailable()),
                    Err(RecvTimeoutError::Timeout) => {
                        return Err(api_error(
                            504,
                            "timeout",
                            &format!("not every shard answered in time; {closed} connections closed so far"),
                        ));
                    }
                }
            }
            let body = serde_json::json!({ "user": parsed.user, "closed": closed });
            Ok(Response::json(200, body.to_string()))
        };
        run().unwrap_or_else(|response| response)
    })
}

/// `GET /api/stats` → totals from the shards' latest published figures.
fn api_stats(request: &Request, state: &AdminState) -> Response {
    with_api(request, state, |_| {
        let shards = state.registry.snapshot();
        let sum = |get: fn(&crate::metrics::ShardMetrics) -> u64| shards.iter().map(get).sum::<u64>();
        let body = serde_json::json!({
            "shards": shards.len(),
            "connections": sum(|m| m.connections),
            "users_online": sum(|m| m.msg_owned_users_online),
            "rooms": sum(|m| m.msg_owned_rooms),
            "messages": {
                "sent": sum(|m| m.msg.sends_accepted),
                "published": sum(|m| m.msg.publishes_accepted),
                "delivered": sum(|m| m.msg.frames_delivered),
                "in": sum(|m| m.messages_in),
                "out": sum(|m| m.messages_out),
            },
        });
        Response::json(200, body.to_string())
    })
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

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            413 => "Content Too Large",
            431 => "Request Header Fields Too Large",
            501 => "Not Implemented",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            other => unreachable!("admin response status {other} has no reason phrase"),
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = &self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        if self.challenge {
            head.push_str("WWW-Authenticate: Bearer realm=\"wsgate-api\"\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ShardMetrics;
    use std::net::SocketAddr;

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
        assert_eq!(
            exchange(addr, b"POST /api/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").0,
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
        assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
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
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b+c"));
        assert_eq!(percent_decode("%e2%82%ac").as_deref(), Some("\u{20ac}"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%ff"), None);
        let debug = format!(
            "{:?}",
            ApiState::new(Secret::from(KEY), Arc::new(BrokenSink::Down), &MsgLimits::default())
        );
        assert!(!debug.contains(KEY), "{debug}");
    }
}
