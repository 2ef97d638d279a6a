#!/usr/bin/env python3
"""Idle-connection density over wss:// (or ws://), measured on a running gateway.

Usage: tls_density.py --pid PID --port PORT --count N [--ca FILE] [--concurrency 256]
                      [--hold SECONDS]

Opens N WebSocket connections to 127.0.0.1:PORT (TLS when --ca names the PEM to
trust; the certificate must be for "localhost"), each one a full TLS handshake and an
HTTP upgrade checked for 101, then holds them idle and reports the gateway's RSS growth
per connection from /proc/PID/status (VmRSS after the hold minus VmRSS before the first
connect), the handshake rate and latency percentiles, and failures.

A stopgap until `wsgate bench density` speaks TLS: Python's asyncio and ssl (OpenSSL)
cost tens of KB per client connection and a few hundred microseconds of CPU per
handshake, so the rate here is the client's limit, not the gateway's; the memory
figure is the gateway's alone.
"""
import argparse
import asyncio
import resource
import ssl
import sys
import time

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def open_one(port, context, held, latencies, failures, gate):
    async with gate:
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", port, ssl=context, server_hostname="localhost" if context else None
                ),
                timeout=30,
            )
            writer.write(UPGRADE)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
        except Exception as e:  # counted by kind, the run goes on
            failures[type(e).__name__] = failures.get(type(e).__name__, 0) + 1
            return
        if not head.startswith(b"HTTP/1.1 101 "):
            failures["not_101"] = failures.get("not_101", 0) + 1
            writer.close()
            return
        latencies.append(time.perf_counter() - started)
        held.append((reader, writer))


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--ca")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--hold", type=float, default=10)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    context = None
    if args.ca:
        context = ssl.create_default_context(cafile=args.ca)
        context.set_alpn_protocols(["http/1.1"])
    before = rss_bytes(args.pid)
    held, latencies, failures = [], [], {}
    gate = asyncio.Semaphore(args.concurrency)
    started = time.perf_counter()
    await asyncio.gather(
        *(open_one(args.port, context, held, latencies, failures, gate) for _ in range(args.count))
    )
    elapsed = time.perf_counter() - started
    await asyncio.sleep(args.hold)
    after = rss_bytes(args.pid)
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0

    print(
        f"mode={'wss' if context else 'ws'} held={len(held)} failures={failures} "
        f"rss_before={before} rss_after={after} "
        f"per_connection_bytes={(after - before) / max(1, len(held)):.0f} "
        f"handshakes_per_s={len(held) / elapsed:.0f} p50_ms={pct(0.5):.2f} p99_ms={pct(0.99):.2f}",
        flush=True,
    )
    for _, writer in held:
        writer.close()
    await asyncio.sleep(1)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
