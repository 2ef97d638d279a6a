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
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::metrics::{ProcessInfo, Registry, render};

/// Bytes of request line and headers of one admin request. Beyond it: 431 and close.
/// Probes and scrapers send a few hundred bytes; 8 KiB matches common HTTP servers.
pub const ADMIN_MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// Headers of one admin request (the parser's fixed array). Beyond it: 431.
pub const ADMIN_MAX_HEADERS: usize = 32;
/// Time a client has to deliver its whole request (head and body), from accept. Beyond
/// it: 408 and close. A deadline for the whole request rather than per read, so a client
/// trickling a byte at a time cannot hold a thread longer than this.
pub const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Request body bytes (`Content-Length`), for the API routes to come. Beyond it: 413.
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
        }
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
#[expect(dead_code, reason = "query, headers and body are for the /api routes to come")]
struct Request {
    /// `GET`, `POST`, ... as sent (methods are case-sensitive).
    method: String,
    /// The target before any `?`.
    path: String,
    /// The target after the `?`, if any.
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

/// One endpoint: a method and an exact path, and the function that answers it.
struct Route {
    method: &'static str,
    path: &'static str,
    handler: fn(&Request, &AdminState) -> Response,
}

/// Every endpoint. A path may appear once per method.
const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        path: "/healthz",
        handler: healthz,
    },
    Route {
        method: "GET",
        path: "/readyz",
        handler: readyz,
    },
    Route {
        method: "GET",
        path: "/metrics",
        handler: metrics,
    },
];

fn route(request: &Request, state: &AdminState) -> Response {
    let mut on_path = ROUTES.iter().filter(|r| r.path == request.path).peekable();
    if on_path.peek().is_none() {
        return Response::text(404, "not found\n");
    }
    let mut allowed = Vec::new();
    for r in on_path {
        if r.method == request.method {
            return (r.handler)(request, state);
        }
        allowed.push(r.method);
    }
    let mut response = Response::text(405, "method not allowed\n");
    response.allow = Some(allowed.join(", "));
    response
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
    Response {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body: render(&shards, &process).into_bytes(),
        allow: None,
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
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            allow: None,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            413 => "Content Too Large",
            431 => "Request Header Fields Too Large",
            501 => "Not Implemented",
            503 => "Service Unavailable",
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
}
