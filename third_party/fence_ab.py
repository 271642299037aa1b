#!/usr/bin/env python3
"""A/B of the glommio patch (third_party/README.md): the same workspace built
on crates.io glommio and on third_party/glommio, run by loadgen with its
embedded broker (2 shards), rate by rate, the two builds back to back in
alternating order. Writes glommio-fence-<utc>-<commit>.{json,md} into OUT.

  python3 third_party/fence_ab.py UPSTREAM_LOADGEN PATCHED_LOADGEN ROUNDS OUT
  python3 third_party/fence_ab.py --render RESULT.json OUT   (Markdown again)

RATES (comma-separated msg/s, 0 = as fast as possible; default
50000,200000,564000), SIZE (message bytes, default 100), DUR and WARM
(seconds) come from the environment. For another pair of builds, A_LABEL
and B_LABEL name them (default upstream, patched), PREFIX names the files
(default glommio-fence) and TITLE heads the Markdown."""
import json, os, platform, re, statistics, subprocess, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "core", "benches", "support"))
from bench_results import checkout_commit, refresh_index  # noqa: E402

FIGURES = ("sent", "p50", "p99", "p999", "broker_cpu_us", "proc_cpu_s")


def run_one(binary, rate, size, dur, warm):
    cmd = ["/usr/bin/time", "-f", "TIME %U %S", binary, "run", "--shards", "2",
           "--queues", "8", "--size", str(size), "--rate", str(rate),
           "--duration", str(dur), "--warmup", str(warm)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    txt = p.stdout + p.stderr
    pub = re.search(r"^\| publish \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", txt, re.M)
    cpu = re.search(r"broker CPU µs per message \| ([\d.]+)", txt)
    sent = re.search(r"published msg/s \| (\d+)", txt)
    t = re.search(r"TIME ([\d.]+) ([\d.]+)", txt)
    if p.returncode != 0 or not (pub and cpu and sent and t):
        sys.exit(f"loadgen failed ({binary}, rate {rate}, exit {p.returncode}):\n{txt[-2000:]}")
    return dict(p50=float(pub[1]), p90=float(pub[2]), p99=float(pub[3]), p999=float(pub[4]),
                broker_cpu_us=float(cpu[1]), sent=int(sent[1]),
                proc_cpu_s=float(t[1]) + float(t[2]))


def render(meta, rows):
    def mmm(vals):
        return dict(median=statistics.median(vals), min=min(vals), max=max(vals))

    def f(d, digits=2):
        return f"{d['median']:.{digits}f} ({d['min']:.{digits}f}-{d['max']:.{digits}f})"

    labels = meta.get("labels", ["upstream", "patched"])
    about = meta.get("about", "Same loadgen and broker code built twice, once on crates.io glommio "
                              "0.9.0 and once on third_party/glommio")
    summary, md = {}, [
        f"# {meta.get('title', 'glommio sleep barrier: membarrier (upstream) vs fences (patched)')}, "
        f"{meta['when']}", "",
        f"Commit `{meta['commit']}`; {meta['cpu']} ({meta['cores']} cores), kernel {meta['kernel']}. "
        f"{about}; {meta['rounds']} rounds, each rate run by both builds back to back "
        f"(order alternating), {meta['duration_s']} s measured after {meta['warmup_s']} s warm-up. "
        f"Workload: {meta['workload']}. Rate 0 is as fast as possible. Median (min-max) over rounds."
        + (f" {meta['note']}" if meta.get("note") else ""), "",
        "| rate msg/s | build | published msg/s | publish p50 ms | p99 ms | p99.9 ms "
        "| broker CPU µs/msg | process CPU s (broker + loadgen) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for rate in meta["rates"]:
        for build in labels:
            rs = [x for x in rows if x["rate"] == rate and x["build"] == build]
            s = {k: mmm([x[k] for x in rs]) for k in FIGURES}
            summary[f"{rate}/{build}"] = s
            md.append(f"| {rate} | {build} | {f(s['sent'], 0)} | {f(s['p50'])} | {f(s['p99'])} "
                      f"| {f(s['p999'])} | {f(s['broker_cpu_us'])} | {f(s['proc_cpu_s'])} |")
    md += ["", meta.get("reproduce", "Reproduce: build the workspace twice (with and without the "
           "`[patch.crates-io]` glommio line in Cargo.toml), then `python3 third_party/fence_ab.py "
           "UPSTREAM_LOADGEN PATCHED_LOADGEN ROUNDS bench-results`.")]
    return summary, "\n".join(md) + "\n"


def write(out, meta, rows):
    summary, md = render(meta, rows)
    base = os.path.join(out, f"{meta.get('prefix', 'glommio-fence')}-{meta['when']}-{meta['commit']}")
    with open(base + ".json", "w") as fh:
        json.dump(dict(meta=meta, summary=summary, runs=rows), fh, indent=1)
    with open(base + ".md", "w") as fh:
        fh.write(md)
    refresh_index(out)
    print(md)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--render":
        with open(sys.argv[2]) as fh:
            d = json.load(fh)
        write(sys.argv[3], d["meta"], d["runs"])
        return
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    up, patched, rounds, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rates = [int(r) for r in os.environ.get("RATES", "50000,200000,564000").split(",")]
    dur, warm = int(os.environ.get("DUR", "8")), int(os.environ.get("WARM", "2"))
    size = int(os.environ.get("SIZE", "100"))
    labels = [os.environ.get("A_LABEL", "upstream"), os.environ.get("B_LABEL", "patched")]
    bins = dict(zip(labels, (up, patched)))
    rows = []
    for r in range(rounds):
        for rate in rates:
            order = labels if r % 2 == 0 else labels[::-1]
            for build in order:
                row = dict(round=r, rate=rate, build=build, **run_one(bins[build], rate, size, dur, warm))
                rows.append(row)
                print(json.dumps(row), flush=True)
    commit = checkout_commit()
    with open("/proc/cpuinfo") as fh:
        cpu = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), "?")
    meta = dict(when=time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime()), commit=commit, cpu=cpu,
                cores=os.cpu_count(), kernel=platform.release(), rounds=rounds, rates=rates,
                duration_s=dur, warmup_s=warm,
                size=size, labels=labels,
                workload=f"ringmq-loadgen run --shards 2 --queues 8 --size {size} --rate R (embedded "
                         "broker, async flush, 1 producer, 1 group of 1 consumer, pace 500 µs)")
    for key in ("title", "prefix", "about", "reproduce"):
        if os.environ.get(key.upper()):
            meta[key] = os.environ[key.upper()]
    write(out, meta, rows)


if __name__ == "__main__":
    main()
