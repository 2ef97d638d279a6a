#!/usr/bin/env python3
"""Interoperability check with a WebSocket client nobody on this project wrote.

Usage: interop_client.py ws://HOST:PORT/PATH             (the server must run with --echo)
       interop_client.py wss://HOST:PORT/PATH --ca FILE  (TLS, trusting the PEM in FILE)
       interop_client.py ws://HOST:PORT/PATH --compression  (the server runs with
                         --compression on: permessage-deflate must be agreed, and every
                         check then runs over compressed frames)

Uses the `websockets` package (sync client) to exercise what a real client does:
text and binary echo, a message split into fragments, a large message, ping/pong,
a message over the server's limit (expects close 1009), and a clean close (1000).
With wss://, the TLS side is Python's `ssl` module (OpenSSL), offering ALPN http/1.1,
and one more check confirms what was negotiated.
Prints one line per check and exits non-zero on the first failure.
"""
import ssl
import sys

from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect


def check(name, ok):
    print(("ok   " if ok else "FAIL ") + name, flush=True)
    if not ok:
        sys.exit(1)


def main():
    url = sys.argv[1]
    compress = "--compression" in sys.argv
    options = {"max_size": None, "compression": "deflate" if compress else None}
    if "--ca" in sys.argv:
        context = ssl.create_default_context(cafile=sys.argv[sys.argv.index("--ca") + 1])
        context.set_alpn_protocols(["http/1.1"])
        options["ssl"] = context
    with connect(url, **options) as ws:
        if compress:
            names = [e.name for e in ws.protocol.extensions]
            check("permessage-deflate negotiated", names == ["permessage-deflate"])
        if "ssl" in options:
            tls = ws.socket
            check(
                "TLS " + str(tls.version()) + ", ALPN " + str(tls.selected_alpn_protocol()),
                tls.selected_alpn_protocol() == "http/1.1",
            )
        ws.send("héllo ☃")
        check("text echo", ws.recv(timeout=5) == "héllo ☃")
        ws.send(bytes(range(256)))
        check("binary echo", ws.recv(timeout=5) == bytes(range(256)))
        ws.send(["frag", "men", "ted"])
        check("fragmented message reassembled", ws.recv(timeout=5) == "fragmented")
        big = "x" * 200_000
        ws.send(big)
        check("200 KB message", ws.recv(timeout=5) == big)
        pong = ws.ping(b"are you there")
        check("ping answered with pong", pong.wait(timeout=5))
        ws.close(code=1000, reason="done")
        check("clean close", ws.close_code == 1000)
    with connect(url, **options) as ws:
        ws.send("y" * (2 * 1024 * 1024))
        try:
            ws.recv(timeout=5)
            check("oversized message refused", False)
        except ConnectionClosedError as e:
            check("oversized message closed with 1009", e.rcvd is not None and e.rcvd.code == 1009)


if __name__ == "__main__":
    main()
