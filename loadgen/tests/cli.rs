//! ringmq-loadgen as a user runs it: a short embedded run with a report,
//! and a run against a separate broker followed by `verify`.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns unwrap too

use ringmq_loadgen::embedded::Embedded;
use ringmq_loadgen::workload::Workload;
use std::process::Command;

fn loadgen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringmq-loadgen"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn an_embedded_run_writes_its_report_and_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("results");
    let out = loadgen(&[
        "run",
        "--duration",
        "2",
        "--warmup",
        "1",
        "--rate",
        "2000",
        "--queues",
        "4",
        "--verify",
        "--report",
        report.to_str().unwrap(),
        "--name",
        "test",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| publish |"), "{stdout}");
    assert!(
        stdout.contains("| 0 / 0 / 0 |"),
        "nothing lost, duplicated or reordered: {stdout}"
    );
    let names: Vec<String> = std::fs::read_dir(&report)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for suffix in [".json", ".md", "-over-time.svg", "-percentiles.svg"] {
        assert!(
            names.iter().any(|n| n.ends_with(suffix)),
            "{suffix} in {names:?}"
        );
    }
    assert!(names.contains(&"README.md".to_owned()), "index");
    let json = names.iter().find(|n| n.ends_with(".json")).unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join(json)).unwrap()).unwrap();
    assert!(v["publish_us"]["p99"].as_u64().unwrap() > 0);
    assert!(!v["series"].as_array().unwrap().is_empty());
    assert_eq!(v["workload"]["rate"], 2000);
}

#[test]
fn an_ack_log_is_verified_against_the_topic() {
    let node = Embedded::start(&Workload {
        shards: 2,
        flush: "sync".into(),
        ..Workload::default()
    })
    .unwrap();
    let ns = node.namesrv_addr();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("acks.log");
    let out = loadgen(&[
        "run",
        "--namesrv",
        &ns,
        "--messages",
        "3000",
        "--groups",
        "0",
        "--queues",
        "4",
        "--ack-log",
        log.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let topic = stdout
        .lines()
        .find_map(|l| l.strip_prefix("topics: "))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 3000);
    let verify = || {
        loadgen(&[
            "verify",
            "--namesrv",
            &ns,
            "--topic",
            &topic,
            "--ack-log",
            log.to_str().unwrap(),
        ])
    };
    let out = verify();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("acknowledged 3000  read 3000  lost 0  duplicated 0  out of order 0"),
        "{stdout}"
    );
    // An ack the topic never had is reported lost, and the exit code says so.
    std::fs::write(
        &log,
        format!("{}99 0\n", std::fs::read_to_string(&log).unwrap()),
    )
    .unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("lost 1"));
    // Bad arguments are refused before anything runs.
    assert_eq!(loadgen(&["run", "--size", "3"]).status.code(), Some(2));
}

#[test]
fn floor_reports_cpu_stalls_disk_write_and_request_path_latency_or_says_fio_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("results");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let out = loadgen(&[
        "floor",
        "--seconds",
        "1",
        "--disk",
        data.to_str().unwrap(),
        "--writes-per-sec",
        "200",
        "--report",
        report.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let fio_installed = Command::new("fio").arg("--version").output().is_ok();
    if !fio_installed {
        // Refused before the CPU probe spends its seconds.
        assert!(!out.status.success());
        assert!(stderr.contains("apt-get install fio"), "{stderr}");
        assert!(!stdout.contains("| CPU | gaps"), "{stdout}");
        return;
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("| CPU | gaps"), "{stdout}\n{stderr}");
    let json = std::fs::read_dir(&report)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    let cpus = v["cpus"].as_array().unwrap();
    assert!(!cpus.is_empty());
    assert!(cpus.iter().all(|c| c["seconds"].as_f64().unwrap() >= 1.0));
    // Percentiles of a probe, in order.
    let ordered = |probe: &serde_json::Value| {
        let us = |k: &str| probe[k].as_f64().unwrap();
        let (p50, p99, max) = (us("p50_us"), us("p99_us"), us("max_us"));
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{probe}");
    };
    let disk = &v["disk"];
    ordered(disk);
    // Two jobs at 200 writes/s each, for a second.
    assert!(disk["writes_per_s"].as_f64().unwrap() > 100.0, "{disk}");
    // The request path: two pairs at 200 requests/s each, every one
    // answered after its write.
    let path = &v["request_path"];
    ordered(path);
    assert_eq!(path["pairs"].as_u64(), Some(2), "{path}");
    assert!(path["requests_per_s"].as_f64().unwrap() > 100.0, "{path}");
    let bare = &v["request_path_no_write"];
    ordered(bare);
    assert_eq!(bare["written"].as_bool(), Some(false), "{bare}");
    assert!(bare["requests_per_s"].as_f64().unwrap() > 100.0, "{bare}");
    assert!(stdout.contains("answered at once (no write)"), "{stdout}");
    assert!(stdout.contains("over loopback TCP"), "{stdout}");
    // fio's files and the path probe's went with their folders.
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0);

    // A data folder that is not there is refused, not created.
    let missing = dir.path().join("no-such-dir");
    let out = loadgen(&[
        "floor",
        "--seconds",
        "1",
        "--disk",
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-dir"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!missing.exists());
}
