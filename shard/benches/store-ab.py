#!/usr/bin/env python3
"""A/B of two builds of the store bench (`shard/benches/store.rs`), side by side.

Runs the two bench executables in interleaved pairs, alternating which goes
first (A B, B A, ...), so that the disk's drift over the run falls on both
alike, and writes one JSON (every run's own JSON, settings, machine) and one
Markdown summary: per figure, each side's median (min-max) and in how many
pairs B came out better.

    python3 shard/benches/store-ab.py --a OLD_BIN --b NEW_BIN \
        [--a-label before] [--b-label after] [--pairs 4] [--seconds 5] \
        [--only async,sync] [--dir /var/tmp/ringmq-store-ab] [--out bench-results] \
        [--title T] [--about TEXT] [--a-args="ARGS"] [--b-args="ARGS"]

`--a-args` / `--b-args` add bench arguments to one side only, so one build
can be compared with itself under two settings (e.g. `--write-through off`).

Build each side with `cargo bench -p ringmq-shard --bench store --no-run` and
copy the executable it names (target/release/deps/store-*) before switching
builds. Every run measures fio again, so each row's ratio to fio is against
the disk of its own moment.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "core", "benches", "support"))
from bench_results import checkout_commit, refresh_index  # noqa: E402

# (path in the bench JSON, label, higher is better)
FIGURES = [
    (("async", "appenders_16", "rounds", 0, "mib_s"), "async 16 appenders MiB/s", True),
    (("async", "appenders_16", "ratio", "median"), "async 16 appenders ÷ fio", True),
    (("async", "appenders_16", "rounds", 0, "cpu_us_per_mib"), "async 16 appenders CPU µs/MiB", False),
    (("async", "appenders_64", "rounds", 0, "mib_s"), "async 64 appenders MiB/s", True),
    (("async", "appenders_64", "ratio", "median"), "async 64 appenders ÷ fio", True),
    (("async", "appenders_64", "rounds", 0, "cpu_us_per_mib"), "async 64 appenders CPU µs/MiB", False),
    (("async", "fio_mib_s", 0), "fio seq write MiB/s", None),
]
for prep in ("fallocate", "zero-fill", "recycle"):
    FIGURES += [
        (("sync", prep, "rounds", 0, "acks_s"), f"sync {prep} acks/s", True),
        (("sync", prep, "rounds", 0, "p99_us"), f"sync {prep} p99 µs", False),
        (("sync", prep, "p99_ratio", "median"), f"sync {prep} p99 ÷ fio p99", False),
        (("sync", prep, "rounds", 0, "cpu_us_per_ack"), f"sync {prep} CPU µs/ack", False),
    ]
FIGURES += [
    (("sync", "fio", 0, "iops"), "fio fdatasync IOPS", None),
    (("sync", "fio", 0, "p99_us"), "fio fdatasync p99 µs", None),
]


def dig(value, path):
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def run_once(binary, extra, args):
    out = tempfile.mkdtemp(prefix="store-ab-")
    try:
        cmd = [binary, "--bench", "--rounds", "1", "--seconds", str(args.seconds),
               "--only", args.only, "--dir", args.dir, "--out", out, *extra]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            sys.exit(f"{binary} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        found = [f for f in os.listdir(out) if f.endswith(".json")]
        if len(found) != 1:
            sys.exit(f"{binary}: expected one JSON in {out}, found {found}")
        with open(os.path.join(out, found[0])) as f:
            return json.load(f)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def fmt(v):
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}"


def render(doc):
    s = doc["settings"]
    a, b = s["a_label"], s["b_label"]
    md = f"# {doc['title']}\n\n{doc['about']}\n\n" if doc["about"] else f"# {doc['title']}\n\n"
    md += (f"Machine: {doc['machine']['cpu_model']}, {doc['machine']['cores']} cores, kernel "
           f"{doc['machine']['kernel']}. {s['pairs']} pairs, order alternating, "
           f"`--seconds {s['seconds']} --only {s['only']}` per run; "
           f"{a} = `{s['a']} {s.get('a_args', '')}`, {b} = `{s['b']} {s.get('b_args', '')}`.\n\n")
    md += f"| figure | {a} median (min-max) | {b} median (min-max) | {b} better in |\n|---|---:|---:|---:|\n"
    for row in doc["figures"]:
        cells = []
        for side in ("a", "b"):
            sp = row[side]
            cells.append("–" if sp is None else f"{fmt(sp['median'])} ({fmt(sp['min'])}-{fmt(sp['max'])})")
        better = "" if row["b_better"] is None else f"{row['b_better']} of {row['pairs']}"
        md += f"| {row['label']} | {cells[0]} | {cells[1]} | {better} |\n"
    md += ("\nEach run is the store bench with `--rounds 1`; its own JSON is kept under `runs` "
           "in this file's JSON.\n\nReproduce: `python3 shard/benches/store-ab.py --a A_BIN --b B_BIN "
           f"--pairs {s['pairs']} --seconds {s['seconds']} --only {s['only']}"
           + (f" --a-args=\"{s['a_args']}\"" if s.get('a_args') else "")
           + (f" --b-args=\"{s['b_args']}\"" if s.get('b_args') else "") + "`\n")
    return md


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--a-label", default="A")
    p.add_argument("--b-label", default="B")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--only", default="async,sync")
    p.add_argument("--dir", default="/var/tmp/ringmq-store-ab")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--title", default="Store bench A/B")
    p.add_argument("--about", default="")
    p.add_argument("--a-args", default="", help="extra bench arguments for A")
    p.add_argument("--b-args", default="", help="extra bench arguments for B")
    args = p.parse_args()
    for binary in (args.a, args.b):
        if not os.access(binary, os.X_OK):
            sys.exit(f"not an executable: {binary}")
    if args.pairs < 1 or args.seconds < 1:
        sys.exit("--pairs and --seconds must be at least 1")

    runs = []
    for i in range(args.pairs):
        order = ("a", "b") if i % 2 == 0 else ("b", "a")
        pair = {}
        for side in order:
            print(f"pair {i + 1}/{args.pairs}: {side}", file=sys.stderr, flush=True)
            extra = shlex.split(getattr(args, f"{side}_args"))
            pair[side] = run_once(getattr(args, side), extra, args)
        runs.append({"order": list(order), **pair})

    figures = []
    for path, label, higher in FIGURES:
        va = [dig(r["a"]["results"], path) for r in runs]
        vb = [dig(r["b"]["results"], path) for r in runs]
        if all(v is None for v in va + vb):
            continue
        both = [(x, y) for x, y in zip(va, vb) if x is not None and y is not None]
        better = None if higher is None else sum((y > x) if higher else (y < x) for x, y in both)
        figures.append({"label": label, "a": spread(va), "b": spread(vb),
                        "b_better": better, "pairs": len(both)})

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    doc = {
        "bench": "store-ab",
        "title": args.title,
        "about": args.about,
        "when": now,
        "machine": runs[0]["a"].get("machine", {"cpu_model": platform.processor(),
                                                 "cores": os.cpu_count(),
                                                 "kernel": platform.release()}),
        "settings": {"a": args.a, "b": args.b, "a_args": args.a_args, "b_args": args.b_args,
                     "a_label": args.a_label, "b_label": args.b_label,
                     "pairs": args.pairs, "seconds": args.seconds, "only": args.only},
        # Each bench reports the commit of the folder it runs in, not the one
        # it was built from: the labels say which build is which.
        "checkout": checkout_commit(),
        "figures": figures,
        "runs": runs,
    }
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"store-ab-{now}-{doc['checkout'] or 'unknown'}")
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(render(doc))
    refresh_index(args.out)
    print(f"wrote {base}.{{json,md}}", file=sys.stderr)


if __name__ == "__main__":
    main()
