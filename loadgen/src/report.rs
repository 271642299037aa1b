//! Results: the final table (stdout), and with `--report DIR` one JSON and
//! one Markdown file per run plus two SVG plots (latency over time, latency
//! by percentile), and the index README of the folder.

#[path = "../../core/benches/support/mod.rs"]
pub(crate) mod support;

use crate::driver::RunOutput;
use crate::stats::{Percentiles, Second};
use crate::workload::Workload;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::path::Path;

/// The numbers of a run, ready to print or store.
#[derive(Debug, Clone)]
pub struct Summary {
    pub publish: Percentiles,
    pub e2e: Percentiles,
    /// Publish latency while a backlog drained (`--backlog` runs).
    pub publish_draining: Option<Percentiles>,
    /// Publish latency after it drained, in the same run.
    pub publish_drained: Option<Percentiles>,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub received_per_s: f64,
    pub broker_cpu_us_per_msg: Option<f64>,
    /// Peak RSS of this process (the broker's and loadgen's when embedded), MiB.
    pub peak_rss_mib: Option<f64>,
}

/// This process's peak resident set, MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

pub fn summarize(w: &Workload, out: &RunOutput) -> Summary {
    let r = &out.recorder;
    let secs = out.measured_secs.max(1e-9);
    Summary {
        publish: Percentiles::of(&r.publish),
        e2e: Percentiles::of(&r.e2e),
        publish_draining: r.draining.as_ref().map(Percentiles::of),
        publish_drained: r.drained.as_ref().map(Percentiles::of),
        msgs_per_s: r.measured_sent as f64 / secs,
        mb_per_s: r.measured_sent as f64 * w.size as f64 / secs / 1e6,
        received_per_s: r.measured_received as f64 / secs,
        broker_cpu_us_per_msg: out
            .broker_cpu_secs
            .filter(|_| r.measured_sent > 0)
            .map(|c| c * 1e6 / r.measured_sent as f64),
        peak_rss_mib: peak_rss_mib(),
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// The final table, as Markdown (also printed).
pub fn table(w: &Workload, s: &Summary, out: &RunOutput) -> String {
    let mut t = String::from(
        "| | p50 ms | p90 ms | p99 ms | p99.9 ms | p99.99 ms | max ms | samples |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let rows = [
        Some(("publish", &s.publish)),
        s.publish_draining
            .as_ref()
            .map(|d| ("publish while the backlog drained", d)),
        s.publish_drained
            .as_ref()
            .map(|d| ("publish after it drained", d)),
        Some(("end-to-end", &s.e2e)),
    ];
    for (name, p) in rows.into_iter().flatten() {
        t += &format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |\n",
            ms(p.p50),
            ms(p.p90),
            ms(p.p99),
            ms(p.p999),
            ms(p.p9999),
            ms(p.max),
            p.count
        );
    }
    t += &format!(
        "\n| rate | value |\n|---|---:|\n| published msg/s | {:.0} |\n| published MB/s | {:.1} |\n| received msg/s | {:.0} |\n| broker CPU µs per message | {} |\n| failed sends | {} |\n| peak RSS MiB (broker + loadgen when embedded) | {} |\n",
        s.msgs_per_s,
        s.mb_per_s,
        s.received_per_s,
        s.broker_cpu_us_per_msg
            .map_or_else(|| "n/a".into(), |c| format!("{c:.2}")),
        out.recorder.failed,
        s.peak_rss_mib.map_or_else(|| "n/a".into(), |m| format!("{m:.0}")),
    );
    if let Some(f) = out.backlog_fill_secs {
        t += &format!(
            "| backlog of {} stored in s | {f:.1} |\n",
            w.backlog.unwrap_or(0)
        );
    }
    if w.backlog.is_some() {
        t += &format!(
            "| backlog drained in s | {} |\n",
            out.drain_secs
                .map_or_else(|| "not drained".into(), |d| format!("{d:.1}"))
        );
    }
    if let Some(v) = &out.recorder.verify {
        t += &format!(
            "| verify: lost / duplicated / out of order | {} / {} / {} |\n",
            out.lost.unwrap_or(0),
            v.duplicates,
            v.out_of_order
        );
    }
    t
}

/// A polyline chart as SVG: one series per (name, points).
fn svg_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    log_x: bool,
) -> String {
    let (w, h, left, bottom) = (800.0, 400.0, 70.0, 50.0);
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let tx = |x: f64| if log_x { x.max(1e-9).log10() } else { x };
    let (x0, x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(tx(p.0)), b.max(tx(p.0)))
    });
    let y1 = pts.iter().fold(0.0f64, |a, p| a.max(p.1)).max(1e-9) * 1.1;
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let sx = |x: f64| left + (tx(x) - x0) / (x1 - x0) * (w - left - 20.0);
    let sy = |y: f64| h - bottom - y / y1 * (h - bottom - 30.0);
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{left}\" y1=\"30\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>\n<text x=\"15\" y=\"{}\" transform=\"rotate(-90 15 {})\" text-anchor=\"middle\">{y_label}</text>\n",
        w / 2.0, h - bottom, w - 20.0, h - bottom, h - bottom, w / 2.0, h - 10.0, h / 2.0, h / 2.0
    );
    for i in 0..=4 {
        let y = y1 * f64::from(i) / 4.0;
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.2}</text><line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#eee\"/>\n",
            left - 5.0, sy(y) + 4.0, y, sy(y), w - 20.0, sy(y)
        );
    }
    for i in 0..=4 {
        let xv = x0 + (x1 - x0) * f64::from(i) / 4.0;
        let label = if log_x {
            format!("{:.4}", 10f64.powf(xv))
        } else {
            format!("{xv:.0}")
        };
        let px = left + (xv - x0) / (x1 - x0) * (w - left - 20.0);
        svg += &format!(
            "<text x=\"{px}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
            h - bottom + 15.0
        );
    }
    for (i, (name, p)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = p
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            path.join(" ")
        );
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{c}\">{name}</text>\n",
            w - 150.0,
            40.0 + 15.0 * i as f64
        );
    }
    svg + "</svg>\n"
}

fn percentile_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    // x: 1 / (1 - quantile), so p99 = 100, p99.99 = 10000.
    [
        0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999,
    ]
    .iter()
    .map(|&q| (1.0 / (1.0 - q), h.value_at_quantile(q) as f64 / 1000.0))
    .collect()
}

fn filesystem(dir: &Path) -> String {
    support::command_output("stat", &["-f", "-c", "%T", &dir.to_string_lossy()])
        .unwrap_or_else(|| "unknown".into())
}

/// Writes the JSON, Markdown and SVGs of a run into `dir`; returns the base path.
pub fn write(
    dir: &Path,
    name: &str,
    w: &Workload,
    out: &RunOutput,
    s: &Summary,
    broker: Value,
    data_dir: Option<&Path>,
) -> std::io::Result<std::path::PathBuf> {
    let started = support::utc_stamp();
    let commit = support::git_commit();
    let machine = support::machine();
    let series: &[Second] = &out.recorder.series;
    let base = format!("loadgen-{name}-{started}-{commit}");
    let over_time = svg_chart(
        &format!("publish latency over time ({name})"),
        "second",
        "ms",
        &[
            (
                "publish p50",
                series
                    .iter()
                    .map(|x| (x.t as f64, x.publish_p50_us as f64 / 1000.0))
                    .collect(),
            ),
            (
                "publish p99",
                series
                    .iter()
                    .map(|x| (x.t as f64, x.publish_p99_us as f64 / 1000.0))
                    .collect(),
            ),
            (
                "end-to-end p99",
                series
                    .iter()
                    .map(|x| (x.t as f64, x.e2e_p99_us as f64 / 1000.0))
                    .collect(),
            ),
        ],
        false,
    );
    let by_percentile = svg_chart(
        &format!("latency by percentile ({name})"),
        "1 / (1 - quantile): 100 = p99, 10000 = p99.99",
        "ms",
        &[
            ("publish", percentile_points(&out.recorder.publish)),
            ("end-to-end", percentile_points(&out.recorder.e2e)),
        ],
        true,
    );
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(format!("{base}-over-time.svg")), over_time)?;
    std::fs::write(dir.join(format!("{base}-percentiles.svg")), by_percentile)?;
    let fs = data_dir.map_or_else(|| "unknown".into(), filesystem);
    let md = format!(
        "# loadgen {name}, {started}\n\nCommit `{commit}`; {} ({} cores), kernel {}, data on {fs}.\n\n\
         Workload: {} topic(s) x {} queues, {} producer(s), {} group(s) x {} consumer(s), {} B messages, keys {}, \
         rate {} msg/s (0 = max), {} s measured after {} s warm-up{}; broker flush `{}`, {} shard(s).\n\n{}\n\
         ![latency over time]({base}-over-time.svg)\n![latency by percentile]({base}-percentiles.svg)\n\n\
         Reproduce: `cargo run --release -p ringmq-loadgen -- run {}`\n",
        machine.cpu_model,
        machine.cores,
        machine.kernel,
        w.topics,
        w.queues,
        w.producers,
        w.groups,
        w.consumers,
        w.size,
        w.keys,
        w.rate,
        w.duration,
        w.warmup,
        w.backlog.map_or_else(String::new, |b| format!(", backlog {b} messages first")),
        w.flush,
        w.shards,
        table(w, s, out),
        cli_args(w),
    );
    let report = json!({
        "tool": "ringmq-loadgen",
        "name": name,
        "started_utc": started,
        "commit": commit,
        "machine": machine,
        "filesystem": fs,
        "workload": w,
        "broker": broker,
        "topics": out.topics,
        "groups": out.groups,
        "publish_us": s.publish,
        "end_to_end_us": s.e2e,
        "publish_while_draining_us": s.publish_draining,
        "publish_after_drain_us": s.publish_drained,
        "published_msgs_per_s": s.msgs_per_s,
        "published_mb_per_s": s.mb_per_s,
        "received_msgs_per_s": s.received_per_s,
        "broker_cpu_us_per_msg": s.broker_cpu_us_per_msg,
        "peak_rss_mib": s.peak_rss_mib,
        "failed": out.recorder.failed,
        "backlog_fill_s": out.backlog_fill_secs,
        "drain_s": out.drain_secs,
        "lost": out.lost,
        "duplicates": out.recorder.verify.as_ref().map(|v| v.duplicates),
        "out_of_order": out.recorder.verify.as_ref().map(|v| v.out_of_order),
        "series": series,
    });
    let text = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(format!("{base}.json")), text)?;
    std::fs::write(dir.join(format!("{base}.md")), md)?;
    support::refresh_index(dir)?;
    Ok(dir.join(base))
}

/// The flags that reproduce a workload.
pub fn cli_args(w: &Workload) -> String {
    let mut a = format!(
        "--topics {} --queues {} --producers {} --groups {} --consumers {} --size {} --keys {} --rate {} --warmup {} --flush {} --shards {} --window {} --linger-us {} --spread {} --pace-us {}",
        w.topics, w.queues, w.producers, w.groups, w.consumers, w.size, w.keys, w.rate, w.warmup, w.flush, w.shards,
        w.window, w.linger_us, w.spread, w.pace_us
    );
    match w.messages {
        Some(m) => a += &format!(" --messages {m}"),
        None => a += &format!(" --duration {}", w.duration),
    }
    if let Some(b) = w.backlog {
        a += &format!(" --backlog {b}");
    }
    if let Some(m) = w.catch_up_mib_per_sec {
        a += &format!(" --catch-up-mib-per-sec {m}");
    }
    a
}

/// Writes a side-by-side comparison (Markdown table and JSON rows).
pub fn write_compare(
    dir: &Path,
    name: &str,
    w: &Workload,
    table_md: &str,
    rows: Value,
) -> std::io::Result<()> {
    let started = support::utc_stamp();
    let commit = support::git_commit();
    let machine = support::machine();
    let base = format!("compare-{name}-{started}-{commit}");
    let md = format!(
        "# compare {name}, {started}\n\nCommit `{commit}`; {} ({} cores), kernel {}. Same workload on each driver, one after another \
         (ringmq embedded, peers started by loadgen on loopback): {} B messages, {} queues, rate {} msg/s (0 = max), {} s after {} s warm-up, flush `{}` \
         (peers: NATS JetStream file storage; Redis AOF everysec, or always for sync).\n\n{table_md}\n\
         Reproduce: `cargo run --release -p ringmq-loadgen -- compare {}`\n",
        machine.cpu_model, machine.cores, machine.kernel, w.size, w.queues, w.rate, w.duration, w.warmup, w.flush, cli_args(w)
    );
    let report = json!({"tool": "ringmq-loadgen compare", "name": name, "started_utc": started, "commit": commit, "machine": machine, "workload": w, "rows": rows});
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(format!("{base}.json")),
        serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?,
    )?;
    std::fs::write(dir.join(format!("{base}.md")), md)?;
    support::refresh_index(dir)
}

/// Writes a `floor` run's JSON and Markdown into `dir`; returns the base path.
pub fn write_floor(
    dir: &Path,
    name: &str,
    cpu: &crate::floor::StallReport,
    disk: Option<&crate::floor::DiskProbes>,
    reproduce: &str,
) -> std::io::Result<std::path::PathBuf> {
    let started = support::utc_stamp();
    let commit = support::git_commit();
    let machine = support::machine();
    let disk_md = disk.map_or_else(String::new, |probes| {
        format!(
            "## disk: direct-write completion latency (fio, io_uring)\n\n{}\n\
             An `async` send is acknowledged once the write holding it completed: publish latency cannot be \
             below these percentiles.\n\n\
             ## request path: paced requests, each written directly, then answered\n\n{}\n\
             The least any broker could do for an `async` send here: a client pinned to one CPU sends each request \
             over loopback TCP when it is due; a server pinned to another writes it with one blocking O_DIRECT write \
             into a file written through beforehand (as a recycled segment) and replies. No batching, queueing or \
             hand-off between threads. Latency is from the intended send time, as loadgen's publish latency. The \
             second row is the same path with no write: what the CPUs and loopback TCP alone add.\n\n",
            crate::floor::disk_table(&probes.disk),
            crate::floor::path_table(&[&probes.request_path, &probes.request_path_no_write])
        )
    });
    let md = format!(
        "# host latency floor {name}, {started}\n\nCommit `{commit}`; {} ({} cores), kernel {}.\n\n\
         ## CPU stalls\n\nOne thread pinned to each CPU read the clock in a tight loop for {} s; every gap of at \
         least {} µs is time the CPU was taken away (hypervisor, interrupts, or any other runnable thread: run it \
         on an idle machine).\n\n{}\n\
         P(wait ≥ 1 ms) is the chance that a request needing that CPU at a random moment finds it gone for at least \
         another millisecond: compare it with a p99 target (1 %); P(wait ≥ 5 ms) with a p99.9 target (0.1 %).\n\n\
         {disk_md}Reproduce: `cargo run --release -p ringmq-loadgen -- floor {reproduce}`\n",
        machine.cpu_model,
        machine.cores,
        machine.kernel,
        cpu.seconds,
        crate::floor::GAP_FLOOR.as_micros(),
        crate::floor::table(cpu),
    );
    let report = json!({
        "tool": "ringmq-loadgen floor",
        "name": name,
        "started_utc": started,
        "commit": commit,
        "machine": machine,
        "arguments": reproduce,
        "gap_floor_us": crate::floor::GAP_FLOOR.as_micros() as u64,
        "seconds": cpu.seconds,
        "cpus": cpu.cpus,
        "disk": disk.map(|p| &p.disk),
        "request_path": disk.map(|p| &p.request_path),
        "request_path_no_write": disk.map(|p| &p.request_path_no_write),
    });
    support::write_report(
        dir,
        &format!("floor-{name}"),
        &started,
        &commit,
        &report,
        &md,
    )
}
