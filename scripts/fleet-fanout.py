#!/usr/bin/env python3
"""Merges the --json reports of one fan-out run spread over several bench processes.

    scripts/fleet-fanout.py SUB1.json SUB2.json ... PUB.json

A room too big for one bench process (one holds < RLIMIT_NOFILE sockets) is measured
by several: each `wsgate bench fanout --publishers 0 --json` holds some members and
listens, one `wsgate bench fanout --subscribers 0 --json` (or with a few members)
publishes. Every report lists, per publish it saw delivered, `[n, t, last_ns, count]`
(`last_delivery_by_publish`: publish number, publish time and latest delivery latency
in ns on CLOCK_MONOTONIC, deliveries). This script joins them on (n, t), keeps the
publishes sent inside the publishers' measurement windows (all of them when no report
published), and prints over every member of every process:

- publish to last delivery: p50, p99 and max over the window's publishes (the latest
  delivery of each publish, over all processes), and how many reached every member;
- deliveries per second: the window publishes' deliveries over the publishers' window,
  and over the span from the first window publish to the last delivery (the rate the
  fleet sustained when deliveries lag behind the publishes);
- delivered against expected (window publishes x members) and the sum of gaps,
  reorderings, errors and dropped connections.

Standard library only. Exit 0 when every window publish reached every member with no
gap, error or drop, 1 otherwise, 2 on bad input.
"""

import json
import math
import sys


def load(path):
    """The last JSON object line of `path` (the bench prints one)."""
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.lstrip().startswith("{")]
    if not lines:
        raise ValueError(f"{path}: no JSON report")
    report = json.loads(lines[-1])
    if report.get("mode") != "fanout":
        raise ValueError(f"{path}: not a `wsgate bench fanout --json` report")
    if "last_delivery_by_publish" not in report:
        raise ValueError(f"{path}: no last_delivery_by_publish (a bench from before fleet runs?)")
    return report


def percentile(sorted_values, q):
    """Nearest rank: the smallest value with at least q of the values at or below it."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def ms(ns):
    return "n/a" if ns is None else f"{ns / 1e6:.2f} ms"


def merge(reports):
    windows = [
        (r["window_from_ns"], r["window_until_ns"])
        for r in reports
        if r["publishers_requested"] > 0 and r["published_total"] > 0
    ]
    published = sum(r["published"] for r in reports if r["publishers_requested"] > 0)
    members = sum(r["joined"] for r in reports)

    def in_window(t):
        return not windows or any(lo <= t < hi for lo, hi in windows)

    # (n, t) -> [latest latency ns, deliveries]: n is unique within one publishing
    # process and t tells apart two processes' same n.
    merged = {}
    for r in reports:
        for n, t, last_ns, count in r["last_delivery_by_publish"]:
            if not in_window(t):
                continue
            entry = merged.setdefault((n, t), [0, 0])
            entry[0] = max(entry[0], last_ns)
            entry[1] += count
    last = sorted(v[0] for v in merged.values())
    delivered = sum(v[1] for v in merged.values())
    complete = sum(1 for v in merged.values() if v[1] >= members)
    if windows:
        span_ns = max(hi for _, hi in windows) - min(lo for lo, _ in windows)
    elif merged:
        # No publisher's report: from the first publish to the last delivery.
        span_ns = max(t + v[0] for (_, t), v in merged.items()) - min(t for _, t in merged)
    else:
        span_ns = 0
    span = span_ns / 1e9
    if merged:
        drained_ns = max(t + v[0] for (_, t), v in merged.items()) - min(t for _, t in merged)
    else:
        drained_ns = 0
    total = lambda key: sum(r[key] for r in reports)
    counts = lambda key: sum(sum(r[key].values()) for r in reports)
    return {
        "reports": len(reports),
        "members": members,
        "publishers_window_secs": span if windows else None,
        "publishes_in_window": published if windows else None,
        "publishes_delivered": len(merged),
        "publishes_reaching_every_member": complete,
        "deliveries": delivered,
        "expected_deliveries": published * members if windows else None,
        "deliveries_per_sec": delivered / span if span > 0 else 0.0,
        "first_publish_to_last_delivery_secs": drained_ns / 1e9,
        "deliveries_per_sec_to_last_delivery": delivered / (drained_ns / 1e9) if drained_ns > 0 else 0.0,
        "last_delivery_p50_ns": percentile(last, 0.50),
        "last_delivery_p99_ns": percentile(last, 0.99),
        "last_delivery_max_ns": last[-1] if last else None,
        "gaps": total("gaps"),
        "out_of_order": total("out_of_order"),
        "errors": counts("errors"),
        "dropped": counts("dropped"),
        "failures": counts("failures"),
        "per_report_delivery_p99_ns_max": max(
            (r["delivery_latency"]["p99_us"] * 1000 for r in reports if r.get("delivery_latency")),
            default=None,
        ),
    }


def main(argv):
    args = [a for a in argv[1:] if a != "--json"]
    if not args or any(a in ("-h", "--help") for a in args):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        reports = [load(path) for path in args]
    except (OSError, ValueError, KeyError) as e:
        print(f"fleet-fanout: {e}", file=sys.stderr)
        return 2
    m = merge(reports)
    if "--json" in argv:
        print(json.dumps(m))
    else:
        print(f"reports                      {m['reports']} ({m['members']} members in all)")
        if m["publishes_in_window"] is not None:
            print(f"publishes in the window      {m['publishes_in_window']} over {m['publishers_window_secs']:.2f}s")
        else:
            print("publishes in the window      unknown (no publisher's report given)")
        print(f"publishes delivered          {m['publishes_delivered']} ({m['publishes_reaching_every_member']} reached every member)")
        expected = m["expected_deliveries"]
        print(f"deliveries                   {m['deliveries']}" + ("" if expected is None else f" of {expected} expected ({expected - m['deliveries']} missing)"))
        print(f"deliveries/s                 {m['deliveries_per_sec']:,.0f} over the publishers' window;"
              f" {m['deliveries_per_sec_to_last_delivery']:,.0f} over the {m['first_publish_to_last_delivery_secs']:.2f}s"
              " from the first publish to the last delivery")
        print(f"publish to last delivery     p50 {ms(m['last_delivery_p50_ns'])}  p99 {ms(m['last_delivery_p99_ns'])}  max {ms(m['last_delivery_max_ns'])}")
        print(f"publish to delivery p99      {ms(m['per_report_delivery_p99_ns_max'])} (the largest of the reports' p99s)")
        print(f"gaps, out of order           {m['gaps']}, {m['out_of_order']}")
        print(f"errors, dropped, failed      {m['errors']}, {m['dropped']}, {m['failures']}")
    ok = (
        m["publishes_delivered"] > 0
        and (m["expected_deliveries"] is None or m["deliveries"] == m["expected_deliveries"])
        and m["publishes_reaching_every_member"] == m["publishes_delivered"]
        and m["gaps"] == 0
        and m["errors"] == 0
        and m["dropped"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
