//! The broker over real sockets on loopback: in-process brokers for the
//! request paths, child processes for SIGTERM, restart and memory.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns unwrap too
mod common;

use bytes::Bytes;
use common::client::*;
use common::procs::*;
use ringmq_core::messages::*;
use ringmq_core::{ErrorCode, GroupName, QueueId, Response, TopicName};
use ringmq_shard::broker::{self, BrokerConfig, RunningBroker};
use std::time::{Duration, Instant};

fn start(shards: usize) -> (tempfile::TempDir, RunningBroker) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BrokerConfig::for_test(dir.path().join("data"), shards);
    let broker = broker::start(cfg).unwrap();
    (dir, broker)
}

fn stop(broker: RunningBroker) {
    broker.shutdown();
    broker.join().unwrap();
}

fn bodies(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{tag}-{i}").into_bytes()).collect()
}

#[test]
fn produce_and_fetch_on_every_shard_directly_and_forwarded() {
    let (_dir, broker) = start(2);
    let mut front = Client::connect(broker.front_addr);
    let desc = front.create_topic("orders", 4);
    assert_eq!(desc.placement.len(), 4);
    let shards: Vec<usize> = desc
        .placement
        .iter()
        .map(|p| p.shard_id.0 as usize)
        .collect();
    assert!(shards.contains(&0) && shards.contains(&1), "{shards:?}");
    let mut by_shard: Vec<Client> = broker
        .shard_addrs
        .iter()
        .map(|a| Client::connect(*a))
        .collect();
    for q in 0..4u32 {
        let owner = shards[q as usize];
        let other = 1 - owner;
        // Owner's port (no hop), the other shard's port and the front port (forwarded).
        let a = by_shard[owner].produce("orders", q, &bodies(&format!("q{q}-own"), 3));
        let b = by_shard[other].produce("orders", q, &bodies(&format!("q{q}-fwd"), 2));
        let c = front.produce("orders", q, &bodies(&format!("q{q}-front"), 1));
        let base = |r: Answer| match r.unwrap().0 {
            Response::SendBatch(s) => s.base_offset,
            other => panic!("{other:?}"),
        };
        assert_eq!((base(a), base(b), base(c)), (0, 3, 5));
        let mut expect = bodies(&format!("q{q}-own"), 3);
        expect.extend(bodies(&format!("q{q}-fwd"), 2));
        expect.extend(bodies(&format!("q{q}-front"), 1));
        for client in [&mut by_shard[other], &mut front] {
            let got = client.read_queue("orders", q, 0);
            let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
            assert_eq!(offsets, (0..6).collect::<Vec<_>>());
            assert_eq!(got.into_iter().map(|(_, b)| b).collect::<Vec<_>>(), expect);
        }
    }
    let status = front.status();
    assert_eq!(status.shards.len(), 2);
    assert!(status.shards.iter().map(|s| s.forwarded).sum::<u64>() >= 8);
    assert_eq!(status.shards.iter().map(|s| s.records_in).sum::<u64>(), 24);
    stop(broker);
}

#[test]
fn a_fetch_at_the_end_parks_and_is_woken_by_the_append() {
    let (_dir, broker) = start(2);
    let mut admin = Client::connect(broker.front_addr);
    admin.create_topic("events", 1);
    let addr = broker.front_addr;
    let waiter = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        let started = Instant::now();
        let (resp, body) = c.call(fetch("events", 0, 0, 10_000), Bytes::new()).unwrap();
        (started.elapsed(), resp, records(body))
    });
    std::thread::sleep(Duration::from_millis(300));
    admin.produce("events", 0, &bodies("wake", 1)).unwrap();
    let (waited, resp, got) = waiter.join().unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "woken by the append, not by the 10 s timeout: {waited:?}"
    );
    assert!(
        waited >= Duration::from_millis(250),
        "it did park: {waited:?}"
    );
    assert!(matches!(resp, Response::Fetch(f) if f.next_offset == 1));
    assert_eq!(got, vec![(0, b"wake-0".to_vec())]);
    // With nothing arriving, the park ends at max_wait_ms with no records.
    let started = Instant::now();
    let (resp, body) = admin
        .call(fetch("events", 0, 1, 200), Bytes::new())
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(190));
    assert!(body.is_empty());
    assert!(matches!(resp, Response::Fetch(f) if f.next_offset == 1));
    stop(broker);
}

#[test]
fn many_concurrent_producers_keep_per_queue_order() {
    let (_dir, broker) = start(2);
    let mut admin = Client::connect(broker.front_addr);
    admin.create_topic("ordered", 2);
    let mut addrs = broker.shard_addrs.clone();
    addrs.push(broker.front_addr);
    let producers: Vec<_> = (0..6)
        .map(|p| {
            let addr = addrs[p % addrs.len()];
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                // Pipelined: 20 sends in flight, then collect their answers.
                for round in 0..10 {
                    let mut sent = Vec::new();
                    for i in 0..20 {
                        let seq = round * 20 + i;
                        let req = SendBatchRequest {
                            topic: TopicName::new("ordered").unwrap(),
                            queue_id: QueueId(0),
                        };
                        sent.push(c.send(
                            req.into(),
                            batch(0, &[format!("p{p}-{seq:05}").into_bytes()]),
                        ));
                    }
                    for _ in 0..20 {
                        let (opaque, answer) = c.recv().unwrap();
                        assert!(sent.contains(&opaque));
                        answer.unwrap();
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let got = admin.read_queue("ordered", 0, 0);
    assert_eq!(got.len(), 6 * 200);
    for (i, (offset, _)) in got.iter().enumerate() {
        assert_eq!(*offset, i as u64, "dense offsets");
    }
    // Pipelined sends on one connection may be stored in any order among
    // themselves, but each producer's rounds are ordered: every record of
    // round r comes before every record of round r + 1.
    for p in 0..6 {
        let rounds: Vec<usize> = got
            .iter()
            .filter_map(|(_, b)| {
                let s = String::from_utf8(b.clone()).unwrap();
                let rest = s.strip_prefix(&format!("p{p}-"))?.to_owned();
                Some(rest.parse::<usize>().unwrap() / 20)
            })
            .collect();
        assert_eq!(rounds.len(), 200);
        assert!(rounds.windows(2).all(|w| w[0] <= w[1]), "producer {p}");
    }
    stop(broker);
}

#[test]
fn bad_input_gets_typed_errors_and_hurts_no_one_else() {
    let (_dir, broker) = start(2);
    let mut good = Client::connect(broker.front_addr);
    good.create_topic("safe", 2);
    // Unknown topic, unknown queue, wrong server, bad arguments.
    let code = |r: Answer| r.unwrap_err().code;
    assert_eq!(
        code(good.produce("nope", 0, &bodies("x", 1))),
        ErrorCode::TopicNotFound
    );
    assert_eq!(
        code(good.produce("safe", 9, &bodies("x", 1))),
        ErrorCode::QueueNotFound
    );
    assert_eq!(
        code(good.call(
            QueryRouteRequest {
                topic: TopicName::new("safe").unwrap()
            },
            Bytes::new()
        )),
        ErrorCode::UnknownRequestCode
    );
    assert_eq!(
        code(good.call(
            CreateTopicRequest {
                topic: TopicName::new("zero").unwrap(),
                queue_count: 0,
                perm: ringmq_core::route::Perm::READ_WRITE
            },
            Bytes::new()
        )),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(good.call(
            CreateTopicRequest {
                topic: TopicName::new("%RETRY%g").unwrap(),
                queue_count: 1,
                perm: ringmq_core::route::Perm::READ_WRITE
            },
            Bytes::new()
        )),
        ErrorCode::InvalidName
    );
    // Topic permissions: no sends to a read-only topic, no fetches from a
    // write-only one.
    for (name, perm) in [
        ("ro", ringmq_core::route::Perm::READ),
        ("wo", ringmq_core::route::Perm::WRITE),
    ] {
        good.call(
            CreateTopicRequest {
                topic: TopicName::new(name).unwrap(),
                queue_count: 1,
                perm,
            },
            Bytes::new(),
        )
        .unwrap();
    }
    assert_eq!(
        code(good.produce("ro", 0, &bodies("x", 1))),
        ErrorCode::NoPermission
    );
    assert!(good.produce("wo", 0, &bodies("x", 1)).is_ok());
    assert_eq!(
        code(good.call(fetch("wo", 0, 0, 0), Bytes::new())),
        ErrorCode::NoPermission
    );
    assert!(good.call(fetch("ro", 0, 0, 0), Bytes::new()).is_ok());
    // A batch whose crc fails.
    let mut bad = batch(0, &bodies("crc", 2)).to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let r = good.call(
        SendBatchRequest {
            topic: TopicName::new("safe").unwrap(),
            queue_id: QueueId(0),
        },
        Bytes::from(bad),
    );
    assert_eq!(code(r), ErrorCode::CrcMismatch);

    // Garbage from other clients while `good` keeps producing.
    let addr = broker.front_addr;
    let vandals: Vec<_> = (0..4)
        .map(|v| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                match v {
                    // An oversize length prefix: refused before allocation, connection closed.
                    0 => {
                        let _ = c.write_raw(&u32::MAX.to_le_bytes());
                        let (_, answer) = c.recv().expect("an error answer before the close");
                        assert_eq!(answer.unwrap_err().code, ErrorCode::FrameTooLarge);
                        assert!(c.recv().is_none(), "then the connection closes");
                    }
                    // A well-framed request with a garbage header: an error, connection kept.
                    1 => {
                        let mut f = Vec::new();
                        let header = [0xffu8; 7];
                        f.extend_from_slice(&((14 + header.len()) as u32).to_le_bytes());
                        f.extend_from_slice(&[1, 0]); // version, kind request
                        f.extend_from_slice(&1u16.to_le_bytes()); // SendBatch
                        f.extend_from_slice(&77u32.to_le_bytes()); // opaque
                        f.extend_from_slice(&0u16.to_le_bytes()); // flags
                        f.extend_from_slice(&(header.len() as u32).to_le_bytes());
                        f.extend_from_slice(&header);
                        c.write_raw(&f).unwrap();
                        let (opaque, answer) = c.recv().unwrap();
                        assert_eq!(opaque, 77);
                        assert_eq!(answer.unwrap_err().code, ErrorCode::Malformed);
                        assert!(c.status().shards.len() == 2, "connection still usable");
                    }
                    // Random bytes until the broker hangs up.
                    _ => {
                        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ v as u64;
                        let junk: Vec<u8> = (0..64 * 1024)
                            .map(|_| {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                x as u8
                            })
                            .collect();
                        let _ = c.write_raw(&junk);
                        while c.recv().is_some() {}
                    }
                }
            })
        })
        .collect();
    for i in 0..200 {
        good.produce("safe", i % 2, &bodies(&format!("ok{i}"), 2))
            .unwrap();
    }
    for v in vandals {
        v.join().unwrap();
    }
    assert_eq!(good.read_queue("safe", 0, 0).len(), 200);
    assert_eq!(good.read_queue("safe", 1, 0).len(), 200);
    stop(broker);
}

#[test]
fn a_client_that_never_reads_answers_is_stopped_by_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = BrokerConfig::for_test(dir.path().join("data"), 2);
    cfg.max_in_flight = 16;
    let broker = broker::start(cfg).unwrap();
    let mut admin = Client::connect(broker.shard_addrs[0]);
    admin.create_topic("flood", 1);
    // Pipeline status requests and never read the answers: the broker
    // answers up to its bound, then stops reading; our writes then block.
    let flood = std::net::TcpStream::connect(broker.shard_addrs[0]).unwrap();
    flood
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut frame = bytes::BytesMut::new();
    ringmq_core::Frame::request(1, &BrokerStatusRequest {}.into(), Bytes::new())
        .encode(&mut frame)
        .unwrap();
    let chunk: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 1000)
        .collect();
    let mut sent = 0usize;
    let started = Instant::now();
    let blocked = loop {
        match std::io::Write::write(&mut &flood, &chunk) {
            Ok(n) => sent += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break true
            }
            Err(e) => panic!("{e}"),
        }
        if started.elapsed() > Duration::from_secs(20) {
            break false;
        }
    };
    assert!(
        blocked,
        "the broker kept reading ({sent} bytes) without anyone reading answers"
    );
    // The broker holds at most the bound in flight, and still serves others.
    let status = admin.status();
    let in_flight: u64 = status.shards.iter().map(|s| s.in_flight).sum();
    assert!(in_flight <= 16 + 1, "in flight: {in_flight}");
    admin.produce("flood", 0, &bodies("still", 1)).unwrap();
    eprintln!("flood blocked after {sent} bytes; broker in flight {in_flight}");
    drop(flood);
    stop(broker);
}

#[test]
fn topics_can_be_described_deleted_and_recreated_empty() {
    let (_dir, broker) = start(2);
    let mut c = Client::connect(broker.shard_addrs[1]);
    let created = c.create_topic("cycle", 3);
    assert_eq!(
        c.create_topic("cycle", 3),
        created,
        "same settings: idempotent"
    );
    assert!(matches!(
        c.call(CreateTopicRequest { topic: TopicName::new("cycle").unwrap(), queue_count: 5, perm: ringmq_core::route::Perm::READ_WRITE }, Bytes::new()),
        Err(e) if e.code == ErrorCode::TopicExists
    ));
    for q in 0..3 {
        c.produce("cycle", q, &bodies("old", 2)).unwrap();
    }
    let described = c.call(
        DescribeTopicRequest {
            topic: TopicName::new("cycle").unwrap(),
        },
        Bytes::new(),
    );
    assert!(matches!(described, Ok((Response::DescribeTopic(d), _)) if d == created));
    c.call(
        DeleteTopicRequest {
            topic: TopicName::new("cycle").unwrap(),
        },
        Bytes::new(),
    )
    .unwrap();
    assert_eq!(
        c.produce("cycle", 0, &bodies("gone", 1)).unwrap_err().code,
        ErrorCode::TopicNotFound
    );
    c.create_topic("cycle", 3);
    for q in 0..3 {
        assert!(
            c.read_queue("cycle", q, 0).is_empty(),
            "queue {q} starts empty"
        );
    }
    stop(broker);
}

#[test]
fn sigterm_then_restart_keeps_every_record_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let group = GroupName::new("g").unwrap();
    let mut b = spawn_broker(&data, "async");
    let mut c = Client::connect(b.front);
    c.create_topic("keep", 4);
    for i in 0..100u32 {
        c.produce("keep", i % 4, &bodies(&format!("r{i}"), 3))
            .unwrap();
    }
    for q in 0..4 {
        c.call(
            CommitOffsetRequest {
                group: group.clone(),
                topic: TopicName::new("keep").unwrap(),
                queue_id: QueueId(q),
                offset: 10 + u64::from(q),
            },
            Bytes::new(),
        )
        .unwrap();
    }
    // A parked fetch is answered at shutdown rather than cut off.
    let front = b.front;
    let parked = std::thread::spawn(move || {
        let mut p = Client::connect(front);
        p.call(fetch("keep", 0, 75, 20_000), Bytes::new())
    });
    std::thread::sleep(Duration::from_millis(200));
    let status = sigterm_and_wait(&mut b);
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(parked.join().unwrap().is_ok(), "parked fetch answered");
    drop(b);

    let b = spawn_broker(&data, "async");
    let mut c = Client::connect(b.front);
    for q in 0..4u32 {
        let got = c.read_queue("keep", q, 0);
        assert_eq!(got.len(), 75, "queue {q}");
        let committed = c.call(
            QueryConsumerOffsetRequest {
                group: group.clone(),
                topic: TopicName::new("keep").unwrap(),
                queue_id: QueueId(q),
            },
            Bytes::new(),
        );
        assert!(
            matches!(committed, Ok((Response::QueryConsumerOffset(r), _)) if r.offset == Some(10 + u64::from(q)))
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

/// The stated bound: an idle connection costs the broker under 64 KiB.
const IDLE_CONNECTION_BYTES: u64 = 64 * 1024;

#[test]
fn a_thousand_idle_connections_stay_within_the_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let b = spawn_broker(&dir.path().join("data"), "async");
    let mut c = Client::connect(b.front);
    c.create_topic("idle", 2);
    c.produce("idle", 0, &bodies("x", 1)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(b.child.id());
    let mut conns: Vec<Client> = (0..1000).map(|_| Client::connect(b.front)).collect();
    // Every connection has been accepted and served once.
    for conn in conns.iter_mut().step_by(50) {
        conn.status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open: u64 = c.status().shards.iter().map(|s| s.connections).sum();
        if open >= 1001 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {open} connections registered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = rss_kib(b.child.id());
    let per_conn = (after.saturating_sub(before) * 1024) / 1000;
    eprintln!("idle connections: RSS {before} KiB -> {after} KiB, {per_conn} bytes each");
    assert!(
        per_conn < IDLE_CONNECTION_BYTES,
        "{per_conn} bytes per idle connection"
    );
    // And the broker still serves.
    c.produce("idle", 1, &bodies("y", 1)).unwrap();
    drop(conns);
}

#[test]
fn a_shard_that_cannot_start_fails_the_broker_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Shard 1's folder is a file: its store cannot open.
    std::fs::write(data.join("shard-1"), b"not a folder").unwrap();
    let started = Instant::now();
    let err = match broker::start(BrokerConfig::for_test(data, 2)) {
        Ok(b) => {
            stop(b);
            panic!("started with a shard that cannot open its store");
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("shard 1"), "{err}");
    // The healthy shard must not wait out the 30 s drain limit for a peer
    // that never came up.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// A port is one broker's: a second broker given a front port or a shard
/// port that another listens on fails to start, naming the port, where
/// glommio's SO_REUSEPORT bind would have let it start and take a share of
/// the first one's connections. The first broker keeps serving.
#[test]
fn a_second_broker_on_ports_in_use_is_refused() {
    let (_dir, first) = start(2);
    let mut client = Client::connect(first.front_addr);
    client.create_topic("mine", 2);
    for (listen, shard_port_base, port) in [
        (first.front_addr, Some(0), first.front_addr),
        (
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            Some(first.shard_addrs[1].port()),
            first.shard_addrs[1],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = BrokerConfig::for_test(dir.path().join("data"), 1);
        cfg.listen = listen;
        cfg.shard_port_base = shard_port_base;
        let err = match broker::start(cfg) {
            Ok(second) => {
                stop(second);
                panic!("a second broker started on {port}, a port in use");
            }
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&format!("cannot listen on {port}")), "{err}");
    }
    // Every connection still reaches the first broker: its topic is there.
    for _ in 0..8 {
        let mut c = Client::connect(first.front_addr);
        let r = c.produce("mine", 0, &bodies("still-mine", 1));
        assert!(matches!(r.unwrap().0, Response::SendBatch(_)));
    }
    stop(first);
}

/// Stopped and started again in this process on the same ports, right
/// after clients used both the front port and a shard port: the closed
/// connections linger in TIME_WAIT, which must not make the new broker's
/// exclusive binds (or its check of the front port) fail.
#[test]
fn a_broker_restarts_on_its_ports_while_old_connections_linger() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = BrokerConfig::for_test(dir.path().join("data"), 2);
    let first = broker::start(cfg.clone()).unwrap();
    cfg.listen = first.front_addr;
    cfg.shard_port_base = Some(first.shard_addrs[0].port());
    let mut front = Client::connect(first.front_addr);
    front.create_topic("t", 2);
    let mut own = Client::connect(first.shard_addrs[0]);
    assert!(matches!(
        own.produce("t", 0, &bodies("before", 1)).unwrap().0,
        Response::SendBatch(_)
    ));
    stop(first);
    drop((front, own));
    let second = broker::start(cfg).unwrap();
    let mut front = Client::connect(second.front_addr);
    assert_eq!(front.read_queue("t", 0, 0).len(), 1);
    stop(second);
}
