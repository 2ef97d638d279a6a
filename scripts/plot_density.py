#!/usr/bin/env python3
"""Draws memory per connection against connection count as an SVG (standard library only).

Usage: plot_density.py samples.csv out.svg [title]

samples.csv has a header line and the columns
    seconds,connections,server_rss_bytes,kernel_bytes
as written by scripts/bench-density.sh while connections ramp up. The picture shows, per
connection, the server's user-space memory (RSS above its idle baseline) and the kernel's
socket memory (slab above its baseline, both ends of loopback halved), over the count.
"""
import csv
import sys


def main():
    src, out = sys.argv[1], sys.argv[2]
    title = sys.argv[3] if len(sys.argv) > 3 else "wsgate: memory per idle connection"
    rows = []
    with open(src) as f:
        for r in csv.DictReader(f):
            rows.append((int(r["connections"]), int(r["server_rss_bytes"]), int(r["kernel_bytes"])))
    if not rows:
        sys.exit("no samples")
    base_rss = rows[0][1]
    base_kernel = rows[0][2]
    points = []
    for conns, rss, kernel in rows:
        if conns < 1000:
            continue  # per-connection figures are noise below a thousand
        points.append((conns, (rss - base_rss) / conns, (kernel - base_kernel) / conns))
    if not points:
        sys.exit("fewer than 1000 connections in every sample")

    w, h, left, right, top, bottom = 860, 480, 80, 30, 50, 60
    xmax = max(p[0] for p in points)
    ymax = max(max(p[1], p[2]) for p in points) * 1.15 or 1
    sx = lambda x: left + (w - left - right) * x / xmax
    sy = lambda y: h - bottom - (h - top - bottom) * y / ymax

    def line(values, color):
        d = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(values))
        return f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2.5"/>'

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
    parts.append(f'<rect x="{w - 330}" y="{top + 5}" width="300" height="50" fill="white" stroke="#999"/>')
    parts.append(f'<line x1="{w - 320}" y1="{top + 22}" x2="{w - 290}" y2="{top + 22}" stroke="#d62728" stroke-width="2.5"/>')
    parts.append(f'<text x="{w - 283}" y="{top + 26}">kernel socket memory ({last[2]:,.0f} B at the end)</text>')
    parts.append(f'<line x1="{w - 320}" y1="{top + 42}" x2="{w - 290}" y2="{top + 42}" stroke="#1f77b4" stroke-width="2.5"/>')
    parts.append(f'<text x="{w - 283}" y="{top + 46}">wsgate RSS ({last[1]:,.0f} B at the end)</text>')
    parts.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
