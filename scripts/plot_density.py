#!/usr/bin/env python3
"""Draws memory per connection against connection count as an SVG (standard library only).

Usage: plot_density.py [--kernel-ends N] samples.csv out.svg [title]

samples.csv has a header line and the columns
    seconds,connections,server_rss_bytes,kernel_bytes
as written by scripts/bench-density.sh while connections ramp up, hold and close. The
first row is the baseline (no connections yet). The picture shows, per connection, the
server's user-space memory (RSS above its idle baseline) and the kernel's socket memory
(above its baseline), over the count, from the first row to the highest count (the
closing rows are left out). kernel_bytes is host-wide: with the load generator on the
same host (loopback) it holds both ends of every connection, so it is divided by
--kernel-ends (default 2; pass 1 when the clients ran on another host).
"""
import csv
import math
import sys


def nice(v):
    """The smallest round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of
    ten) at or above v: the top of the axis."""
    if v <= 0:
        return 1
    scale = 10 ** math.floor(math.log10(v))
    return next(m * scale for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if m * scale >= v)


def main():
    args = sys.argv[1:]
    ends = 2
    if len(args) >= 2 and args[0] == "--kernel-ends":
        ends = int(args[1])
        args = args[2:]
    if len(args) < 2 or ends < 1:
        sys.exit(__doc__)
    src, out = args[0], args[1]
    title = args[2] if len(args) > 2 else "wsgate: memory per idle connection"
    rows = []
    with open(src) as f:
        for r in csv.DictReader(f):
            rows.append((int(r["connections"]), int(r["server_rss_bytes"]), int(r["kernel_bytes"])))
    if not rows:
        sys.exit("no samples")
    base_rss = rows[0][1]
    base_kernel = rows[0][2]
    # Up to the last row at the highest count: while connections close, memory is not
    # returned at once and per-connection figures would climb meaninglessly.
    peak = max(r[0] for r in rows)
    last_peak = max(i for i, r in enumerate(rows) if r[0] == peak)
    points = []
    for conns, rss, kernel in rows[: last_peak + 1]:
        if conns < 1000:
            continue  # per-connection figures are noise below a thousand
        points.append((conns, (rss - base_rss) / conns, (kernel - base_kernel) / conns / ends))
    if not points:
        sys.exit("fewer than 1000 connections in every sample")

    w, h, left, right, top, bottom = 860, 480, 80, 30, 50, 60
    xmax = nice(max(p[0] for p in points))
    ymax = nice(max(max(p[1], p[2]) for p in points) * 1.15)
    sx = lambda x: left + (w - left - right) * x / xmax
    sy = lambda y: h - bottom - (h - top - bottom) * y / ymax

    def line(values, color):
        d = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(values))
        dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>' for x, y in values)
        return f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2.5"/>' + dots

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="13">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="28" text-anchor="middle" font-size="17">{title}</text>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>',
    ]
    for i in range(6):
        yv = ymax * i / 5
        parts.append(f'<line x1="{left}" y1="{sy(yv):.1f}" x2="{w - right}" y2="{sy(yv):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 8}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:,.0f}</text>')
        xv = xmax * i / 5
        parts.append(f'<text x="{sx(xv):.1f}" y="{h - bottom + 20}" text-anchor="middle">{xv:,.0f}</text>')
    parts.append(f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle">connections held</text>')
    parts.append(
        f'<text x="20" y="{h / 2}" text-anchor="middle" transform="rotate(-90 20 {h / 2})">bytes per connection</text>'
    )
    parts.append(line([(p[0], p[2]) for p in points], "#d62728"))
    parts.append(line([(p[0], p[1]) for p in points], "#1f77b4"))
    last = points[-1]
    # The legend sits in the band between the RSS curve (low) and the kernel curve
    # (high), where neither runs.
    gap_mid = (max(p[1] for p in points) + min(p[2] for p in points)) / 2
    lx, ly = left + 30, min(max(sy(gap_mid) - 25, top + 5), h - bottom - 55)
    parts.append(f'<rect x="{lx}" y="{ly}" width="390" height="50" fill="white" fill-opacity="0.85" stroke="#999"/>')
    parts.append(f'<line x1="{lx + 10}" y1="{ly + 17}" x2="{lx + 40}" y2="{ly + 17}" stroke="#d62728" stroke-width="2.5"/>')
    kernel_label = "kernel per server socket (host-wide / 2)" if ends == 2 else "kernel socket memory"
    parts.append(f'<text x="{lx + 47}" y="{ly + 21}">{kernel_label}: {last[2]:,.0f} B at the end</text>')
    parts.append(f'<line x1="{lx + 10}" y1="{ly + 37}" x2="{lx + 40}" y2="{ly + 37}" stroke="#1f77b4" stroke-width="2.5"/>')
    parts.append(f'<text x="{lx + 47}" y="{ly + 41}">wsgate RSS above its baseline: {last[1]:,.0f} B at the end</text>')
    parts.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
