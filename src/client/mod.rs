//! The JavaScript client and the chat demo, served by `wsgate serve --demo`.
//!
//! `wsgate.js` is the official client of `wsgate.v1.json` for browsers and Node
//! (reconnect with backoff and full jitter, recovery by sequence number, an
//! application-level ping, a bounded queue while disconnected); `wsgate.d.ts` types it;
//! `demo.html` is a small chat built on it. Both served files are compiled into the
//! binary, so the page a gateway serves always matches the protocol it speaks.
//!
//! In: the path of a plain `GET` the upgrade refused with 404
//! ([`crate::proto::handshake::request_path`]). Out: the complete HTTP response, written
//! into the caller's buffer ([`Page::write_response`]); the shard closes the connection
//! after it, as after any answer that is not a 101. The tests of the client itself are
//! Node's: `sdk.test.mjs` (the logic, on a fake WebSocket) and `browser.test.mjs` (two
//! pages in a headless Chromium through a real gateway, restarted mid-conversation).
#![forbid(unsafe_code)]

/// The client, an ES module with no dependencies.
pub const CLIENT_JS: &str = include_str!("wsgate.js");
/// The chat demo: one HTML page with inline CSS and a module script that imports
/// [`CLIENT_PATH`].
pub const DEMO_HTML: &str = include_str!("demo.html");
/// Where [`CLIENT_JS`] is served.
pub const CLIENT_PATH: &str = "/client/wsgate.js";
/// Where [`DEMO_HTML`] is served.
pub const DEMO_PATH: &str = "/demo";

/// The demo page may load only what this gateway serves, and talk only to it: the page
/// works offline and behind any firewall, and a token typed into it goes nowhere else.
const DEMO_CSP: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; \
                        img-src data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'";

/// A file `--demo` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// The `Content-Type` it is served with.
    pub content_type: &'static str,
    /// The file.
    pub body: &'static str,
    /// A `Content-Security-Policy`, for the HTML page.
    csp: Option<&'static str>,
}

/// The page served at `path` (matched exactly, like the upgrade paths), if any.
pub fn page(path: &str) -> Option<Page> {
    match path {
        CLIENT_PATH => Some(Page {
            content_type: "text/javascript; charset=utf-8",
            body: CLIENT_JS,
            csp: None,
        }),
        DEMO_PATH => Some(Page {
            content_type: "text/html; charset=utf-8",
            body: DEMO_HTML,
            csp: Some(DEMO_CSP),
        }),
        _ => None,
    }
}

impl Page {
    /// Appends the whole `200 OK` response. `Connection: close`: the listener serves
    /// one answer per connection that does not upgrade. `no-cache`: a browser
    /// revalidates, so a new gateway's client replaces an old one at the next load.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        out.reserve(self.body.len() + 512);
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(self.body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n");
        if let Some(csp) = self.csp {
            out.extend_from_slice(b"Content-Security-Policy: ");
            out.extend_from_slice(csp.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_exactly_two_paths() {
        assert_eq!(page(CLIENT_PATH).unwrap().body, CLIENT_JS);
        assert_eq!(page(DEMO_PATH).unwrap().body, DEMO_HTML);
        for other in [
            "/",
            "/demo/",
            "/Demo",
            "/client/",
            "/client/wsgate.d.ts",
            "/ws",
            "/demo.html",
        ] {
            assert_eq!(page(other), None, "{other}");
        }
    }

    #[test]
    fn responses_are_complete_http() {
        for path in [CLIENT_PATH, DEMO_PATH] {
            let page = page(path).unwrap();
            let mut out = Vec::new();
            page.write_response(&mut out);
            let text = String::from_utf8(out).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert!(head.contains(&format!("\r\nContent-Type: {}\r\n", page.content_type)));
            assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
            assert!(head.contains("\r\nConnection: close\r\n"));
            assert_eq!(body, page.body);
        }
    }

    #[test]
    fn the_demo_imports_the_client_it_is_served_with() {
        // The page loads nothing but the gateway's own client (the CSP enforces it).
        assert!(DEMO_HTML.contains(&format!("from \"{CLIENT_PATH}\"")));
        assert!(!DEMO_HTML.contains("http://") && !DEMO_HTML.contains("https://"));
        assert!(CLIENT_JS.contains("export async function connect("));
        assert!(CLIENT_JS.contains("\"wsgate.v1.json\""));
    }
}
