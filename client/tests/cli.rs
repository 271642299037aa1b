//! The `ringmq` admin CLI against a real broker with its embedded name
//! server (`--standalone`), over loopback.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns unwrap too

use ringmq_client::admin::AdminConn;
use ringmq_core::messages::*;
use ringmq_core::{GroupName, QueueId, TopicName};
use ringmq_shard::broker::{self, BrokerConfig, RunningBroker};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn standalone() -> (tempfile::TempDir, RunningBroker) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = BrokerConfig::for_test(dir.path().join("data"), 2);
    cfg.standalone = true;
    cfg.advertise_host = Some("127.0.0.1".into());
    (dir, broker::start(cfg).unwrap())
}

fn ringmq(namesrv: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .arg("--namesrv")
        .arg(namesrv)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn topics_are_created_routed_described_listed_and_deleted() {
    let (_dir, b) = standalone();
    let ns = b.namesrv_addr.unwrap().to_string();
    // Wait for the broker's first registration.
    let deadline = Instant::now() + Duration::from_secs(5);
    while json(&ringmq(&ns, &["--json", "cluster", "list"]))
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        assert!(Instant::now() < deadline, "broker never registered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let out = ringmq(&ns, &["topic", "create", "orders", "--queues", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text(&out).contains("warning"), "{}", text(&out));
    // The CLI waits for the route; it must be there within one second.
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "create + route visible took {took:?}"
    );
    let route = json(&ringmq(&ns, &["--json", "topic", "route", "orders"]));
    let queues = route["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 4);
    let shard_addrs: Vec<String> = b.shard_addrs.iter().map(|a| a.to_string()).collect();
    for q in queues {
        assert!(
            shard_addrs.contains(&q["addr"].as_str().unwrap().to_owned()),
            "{q}"
        );
    }
    let table = text(&ringmq(&ns, &["topic", "route", "orders"]));
    assert!(table.starts_with("QUEUE"), "{table}");
    assert_eq!(text(&ringmq(&ns, &["topic", "list"])).trim(), "orders");
    let described = json(&ringmq(&ns, &["--json", "topic", "describe", "orders"]));
    assert_eq!(described[0]["topic"]["queue_count"], 4);
    let status = json(&ringmq(&ns, &["--json", "broker", "status"]));
    assert_eq!(status[0]["shards"].as_array().unwrap().len(), 2);
    let cluster = json(&ringmq(&ns, &["--json", "cluster", "list"]));
    assert_eq!(cluster[0]["shards"].as_array().unwrap().len(), 2);

    // Group progress: commit on one queue, produce nothing: lag follows max offsets.
    let mut conn = AdminConn::connect(&b.front_addr.to_string(), Duration::from_secs(5)).unwrap();
    for q in 0..4u32 {
        let mut batch = ringmq_core::BatchBuilder::new(QueueId(q));
        for _ in 0..3 {
            batch
                .push(&ringmq_core::RecordInput {
                    body: b"x",
                    ..Default::default()
                })
                .unwrap();
        }
        conn.call_raw(
            SendBatchRequest {
                topic: TopicName::new("orders").unwrap(),
                queue_id: QueueId(q),
            }
            .into(),
            batch.finish().unwrap(),
        )
        .unwrap();
    }
    conn.call(CommitOffsetRequest {
        group: GroupName::new("billing").unwrap(),
        topic: TopicName::new("orders").unwrap(),
        queue_id: QueueId(1),
        offset: 2,
    })
    .unwrap();
    let progress = json(&ringmq(
        &ns,
        &[
            "--json", "group", "progress", "billing", "--topic", "orders",
        ],
    ));
    assert_eq!(progress["total_lag"], 3 * 3 + 1);
    let groups = json(&ringmq(&ns, &["--json", "group", "list"]));
    assert!(groups.get("billing").is_some(), "{groups}");

    let out = ringmq(&ns, &["topic", "delete", "orders"]);
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(2);
    while !text(&ringmq(&ns, &["topic", "list"])).trim().is_empty() {
        assert!(Instant::now() < deadline, "deleted topic still routed");
        std::thread::sleep(Duration::from_millis(20));
    }
    b.shutdown();
    b.join().unwrap();
}

#[test]
fn errors_are_clear_and_exit_non_zero() {
    let (_dir, b) = standalone();
    let ns = b.namesrv_addr.unwrap().to_string();
    // Unreachable name server: exit 3.
    let out = ringmq("127.0.0.1:1", &["topic", "list"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
    // A dead first name server: the second answers.
    let out = ringmq(&format!("127.0.0.1:1,{ns}"), &["topic", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Invalid name: exit 2 before any request.
    let out = ringmq(&ns, &["topic", "create", "bad name", "--queues", "1"]);
    assert_eq!(out.status.code(), Some(2));
    // Unknown topic: the name server's error, exit 1.
    let out = ringmq(&ns, &["topic", "route", "missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TopicNotFound"));
    // No name server at all.
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["topic", "list"])
        .env_remove("RINGMQ_NAMESRV")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    b.shutdown();
    b.join().unwrap();
}
