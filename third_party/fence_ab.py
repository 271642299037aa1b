#!/usr/bin/env python3
"""A/B: loadgen (embedded broker, 2 shards) built on upstream glommio vs the
patched copy, interleaved, several rates. Writes JSON + Markdown."""
import json, os, re, statistics, subprocess, sys, time, platform

up, patched, rounds, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rates = [int(r) for r in os.environ.get("RATES", "50000,200000,564000").split(",")]
dur, warm = int(os.environ.get("DUR", "8")), int(os.environ.get("WARM", "2"))
bins = {"upstream": up, "patched": patched}
rows = []
for r in range(rounds):
    for rate in rates:
        order = ["upstream", "patched"] if r % 2 == 0 else ["patched", "upstream"]
        for name in order:
            cmd = ["/usr/bin/time", "-f", "TIME %U %S", bins[name], "run", "--shards", "2",
                   "--queues", "8", "--size", "100", "--rate", str(rate),
                   "--duration", str(dur), "--warmup", str(warm)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            txt = p.stdout + p.stderr
            pub = re.search(r"^\| publish \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", txt, re.M)
            cpu = re.search(r"broker CPU µs per message \| ([\d.]+)", txt)
            sent = re.search(r"published msg/s \| (\d+)", txt)
            t = re.search(r"TIME ([\d.]+) ([\d.]+)", txt)
            row = dict(round=r, rate=rate, build=name, rc=p.returncode,
                       p50=float(pub[1]), p90=float(pub[2]), p99=float(pub[3]), p999=float(pub[4]),
                       broker_cpu_us=float(cpu[1]), sent=int(sent[1]),
                       proc_cpu_s=float(t[1]) + float(t[2]))
            rows.append(row)
            print(json.dumps(row), flush=True)

def mmm(vals):
    return dict(median=statistics.median(vals), min=min(vals), max=max(vals))

summary = {}
for rate in rates:
    for name in bins:
        rs = [x for x in rows if x["rate"] == rate and x["build"] == name]
        summary[f"{rate}/{name}"] = {k: mmm([x[k] for x in rs]) for k in
                                     ("p50", "p99", "p999", "broker_cpu_us", "proc_cpu_s")}
commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
ts = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
meta = dict(when=ts, commit=commit + ("-dirty" if dirty else ""), cpu=cpu_model, cores=os.cpu_count(),
            kernel=platform.release(), rounds=rounds, rates=rates, duration_s=dur, warmup_s=warm,
            workload="ringmq-loadgen run --shards 2 --queues 8 --size 100 --rate R (embedded broker, async flush, 1 producer, 1 group, 1 consumer, pace 500 us)")
base = os.path.join(out, f"glommio-fence-{ts}-{meta['commit']}")
json.dump(dict(meta=meta, summary=summary, runs=rows), open(base + ".json", "w"), indent=1)
f = lambda d: f"{d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f})"
md = [f"# glommio sleep barrier: membarrier (upstream) vs fences (patched), {ts}", "",
      f"Commit `{meta['commit']}`; {cpu_model} ({os.cpu_count()} cores), kernel {meta['kernel']}. "
      f"Same loadgen and broker code built twice, once on crates.io glommio 0.9.0 and once on third_party/glommio; "
      f"{rounds} rounds, each rate run by both builds back to back (order alternating), {dur} s measured after {warm} s warm-up. "
      f"Workload: {meta['workload']}. Median (min-max) over rounds.", "",
      "| rate msg/s | build | publish p50 ms | p99 ms | p99.9 ms | broker CPU µs/msg | process CPU s (broker + loadgen) |",
      "|---:|---|---:|---:|---:|---:|---:|"]
for rate in rates:
    for name in bins:
        s = summary[f"{rate}/{name}"]
        md.append(f"| {rate} | {name} | {f(s['p50'])} | {f(s['p99'])} | {f(s['p999'])} | {f(s['broker_cpu_us'])} | {f(s['proc_cpu_s'])} |")
md += ["", "Reproduce: build the workspace twice (with and without the `[patch.crates-io]` glommio line), then "
       "`python3 third_party/fence_ab.py UPSTREAM_LOADGEN PATCHED_LOADGEN ROUNDS bench-results`."]
open(base + ".md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
