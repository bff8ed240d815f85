#!/usr/bin/env python3
"""Diff two Prometheus scrapes of Haven's /metrics: what happened between them.

    scripts/metrics-diff.py BEFORE.txt AFTER.txt [--slow SECONDS]

For every histogram (`*_bucket` series) it prints, per label set, the observations between the
two scrapes, their mean, and how many were slower than --slow (default 0.05 s), with the
buckets they fell in. Counters (`*_total`) are printed as their increase. Used to read the
benchmarks' before/after scrapes (scripts/bench-sms writes them to target/bench/raw/).
"""

import argparse
import math
import re
import sys
from collections import defaultdict

LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")


def parse(path):
    """{(name, labels-without-le): {le or None: value}} for every sample."""
    out = defaultdict(dict)
    with open(path, encoding="utf-8") as f:
        for raw in f:
            if raw.startswith("#"):
                continue
            m = LINE.match(raw.strip())
            if not m:
                continue
            name, _, labels, value = m.groups()
            try:
                v = float(value)
            except ValueError:
                continue
            le = None
            rest = []
            for part in re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', labels or ""):
                if part[0] == "le":
                    le = part[1]
                else:
                    rest.append(f'{part[0]}="{part[1]}"')
            out[(name, ",".join(rest))][le] = v
    return out


def le_value(le):
    return math.inf if le == "+Inf" else float(le)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--slow", type=float, default=0.05)
    args = ap.parse_args()
    before, after = parse(args.before), parse(args.after)
    for (name, labels), samples in sorted(after.items()):
        old = before.get((name, labels), {})
        if name.endswith("_bucket"):
            base = name[: -len("_bucket")]
            count = after.get((base + "_count", labels), {}).get(None, 0) - before.get(
                (base + "_count", labels), {}
            ).get(None, 0)
            if count <= 0:
                continue
            total = after.get((base + "_sum", labels), {}).get(None, 0) - before.get(
                (base + "_sum", labels), {}
            ).get(None, 0)
            bounds = sorted(samples, key=le_value)
            cumulative = [(le, samples[le] - old.get(le, 0)) for le in bounds]
            # Observations at or below --slow: the largest bucket bound not above it.
            fast = max((c for le, c in cumulative if le_value(le) <= args.slow), default=0)
            slow = count - fast
            spread = []
            prev = 0
            for le, c in cumulative:
                if c > prev and le_value(le) > args.slow:
                    spread.append(f"<={le}: {int(c - prev)}")
                prev = c
            line = f"{base}{{{labels}}} n={int(count)} mean={total / count * 1000:.2f}ms"
            if slow > 0:
                line += f"  over {args.slow * 1000:g}ms: {int(slow)} ({', '.join(spread)})"
            print(line)
        elif name.endswith("_total") and None in samples:
            inc = samples[None] - old.get(None, 0)
            if inc:
                print(f"{name}{{{labels}}} +{inc:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
