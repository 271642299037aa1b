//! Name server and brokers together: real name servers (in this process)
//! and brokers as child processes, over loopback.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns unwrap too

mod common;

use bytes::Bytes;
use common::client::*;
use common::procs::*;
use ringmq_core::messages::*;
use ringmq_core::route::{BrokerRole, Perm, QueuePlacement, TopicDescription, TopicRoute};
use ringmq_core::{BrokerId, ErrorCode, QueueId, Response, ShardId, TopicName};
use ringmq_namesrv::{NamesrvConfig, RunningNamesrv};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_millis(300);

fn namesrv_at(addr: SocketAddr) -> RunningNamesrv {
    ringmq_namesrv::start(NamesrvConfig {
        listen: addr,
        heartbeat_interval: INTERVAL,
        cpu: None,
    })
    .unwrap()
}

fn namesrv() -> RunningNamesrv {
    namesrv_at(SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn route(ns: SocketAddr, topic: &str) -> Result<TopicRoute, ringmq_core::ErrorResponse> {
    let mut c = Client::connect(ns);
    c.call(
        QueryRouteRequest {
            topic: TopicName::new(topic).unwrap(),
        },
        Bytes::new(),
    )
    .map(|(r, _)| match r {
        Response::QueryRoute(r) => r,
        other => panic!("{other:?}"),
    })
}

/// Polls `f` until it is true or `limit` passes; returns the time taken.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn broker(dir: &tempfile::TempDir, name: &str, namesrvs: &str) -> Child_ {
    spawn_broker_with(
        &dir.path().join(name),
        &[
            "--name",
            name,
            "--namesrv",
            namesrvs,
            "--advertise-host",
            "127.0.0.1",
        ],
    )
}

#[test]
fn two_brokers_route_every_shard_and_a_killed_one_leaves_the_routes() {
    let ns = namesrv();
    let dir = tempfile::tempdir().unwrap();
    let a = broker(&dir, "a", &ns.addr.to_string());
    let mut b = broker(&dir, "b", &ns.addr.to_string());
    for br in [&a, &b] {
        Client::connect(br.front).create_topic("orders", 4);
    }
    let took = within(Duration::from_secs(1), || {
        route(ns.addr, "orders").is_ok_and(|r| r.brokers.len() == 2)
    });
    assert!(took.is_some(), "the route is visible within one second");
    let r = route(ns.addr, "orders").unwrap();
    assert_eq!(r.queues.len(), 8);
    for br in &r.brokers {
        assert_eq!(br.shards.len(), 2);
        assert_ne!(
            br.shards[0].addr, br.shards[1].addr,
            "each shard has its own address"
        );
        // Every advertised shard address answers.
        for s in &br.shards {
            let addr: SocketAddr = s.addr.parse().unwrap();
            assert_eq!(Client::connect(addr).status().shards.len(), 2);
        }
    }
    // SIGKILL b: it leaves the routes within three intervals.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let gone = within(INTERVAL * 3 + Duration::from_millis(500), || {
        route(ns.addr, "orders").is_ok_and(|r| r.brokers.len() == 1)
    });
    assert!(gone.is_some(), "killed broker still routed");
    assert_eq!(
        route(ns.addr, "orders").unwrap().brokers[0].broker_name,
        "a"
    );
    drop(a);
    ns.shutdown();
    ns.join().unwrap();
}

#[test]
fn a_restarted_name_server_is_repopulated_by_the_brokers() {
    let ns1 = namesrv();
    let ns2 = namesrv();
    let list = format!("{},{}", ns1.addr, ns2.addr);
    let dir = tempfile::tempdir().unwrap();
    let a = broker(&dir, "a", &list);
    Client::connect(a.front).create_topic("events", 2);
    assert!(
        within(Duration::from_secs(1), || route(ns1.addr, "events").is_ok()
            && route(ns2.addr, "events").is_ok())
        .is_some()
    );
    // Restart ns1 on the same port: the broker's next registration fills it.
    let addr1 = ns1.addr;
    ns1.shutdown();
    ns1.join().unwrap();
    let ns1 = namesrv_at(addr1);
    let refilled = within(INTERVAL * 3 + Duration::from_secs(3), || {
        route(addr1, "events").is_ok()
    });
    assert!(refilled.is_some(), "restarted name server repopulated");
    // (Client failover between name servers is tested with the real client
    // in client/tests/client.rs.)
    ns1.shutdown();
    ns1.join().unwrap();
    drop(a);
    ns2.shutdown();
    ns2.join().unwrap();
}

#[test]
fn malformed_requests_get_errors_and_the_name_server_keeps_serving() {
    let ns = namesrv();
    let mut c = Client::connect(ns.addr);
    // A broker request sent to the name server.
    let err = c
        .call(
            SendBatchRequest {
                topic: TopicName::new("x").unwrap(),
                queue_id: QueueId(0),
            },
            Bytes::new(),
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownRequestCode);
    // A registration chunk that continues nothing.
    let bad = RegisterBrokerRequest {
        cluster: "c".into(),
        broker_name: "z".into(),
        broker_id: BrokerId(0),
        role: BrokerRole::Master,
        front_addr: "127.0.0.1:1".into(),
        shards: vec![],
        data_version: 1,
        chunk_index: 3,
        chunk_count: 2,
        topics: vec![],
        version: "t".into(),
    };
    assert_eq!(
        c.call(bad, Bytes::new()).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    // Garbage bytes on another connection.
    let mut g = Client::connect(ns.addr);
    let _ = g.write_raw(&[0xff; 64]);
    assert!(g.recv().is_some_and(|(_, a)| a.is_err()));
    // Still serving.
    assert!(matches!(
        c.call(ListTopicsRequest {}, Bytes::new()),
        Ok((Response::ListTopics(_), _))
    ));
    ns.shutdown();
    ns.join().unwrap();
}

#[test]
fn a_hundred_thousand_topics_of_eight_queues_register_in_chunks_and_route() {
    // This "broker" never heartbeats: a long interval keeps it from
    // expiring while a slow (debug, loaded) machine queries its routes.
    let ns = ringmq_namesrv::start(NamesrvConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        heartbeat_interval: Duration::from_secs(60),
        cpu: None,
    })
    .unwrap();
    let mut c = Client::connect(ns.addr);
    let topics: Vec<TopicDescription> = (0..100_000)
        .map(|i| TopicDescription {
            topic: TopicName::new(format!("topic-{i:06}")).unwrap(),
            queue_count: 8,
            perm: Perm::READ_WRITE,
            placement: (0..8)
                .map(|q| QueuePlacement {
                    queue_id: QueueId(q),
                    shard_id: ShardId((q % 2) as u16),
                })
                .collect(),
        })
        .collect();
    // ~90 bytes per topic: 100k topics are ~9 MiB, so 1 MiB chunks.
    let chunks: Vec<&[TopicDescription]> = topics.chunks(10_000).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let req = RegisterBrokerRequest {
            cluster: "c".into(),
            broker_name: "big".into(),
            broker_id: BrokerId(0),
            role: BrokerRole::Master,
            front_addr: "127.0.0.1:10911".into(),
            shards: vec![],
            data_version: 7,
            chunk_index: i as u32,
            chunk_count: chunks.len() as u32,
            topics: chunk.to_vec(),
            version: "t".into(),
        };
        c.call(req, Bytes::new()).unwrap();
    }
    match c.call(ListTopicsRequest {}, Bytes::new()).unwrap().0 {
        Response::ListTopics(l) => assert_eq!(l.topics.len(), 100_000),
        other => panic!("{other:?}"),
    }
    for i in (0..100_000).step_by(4999) {
        let r = route(ns.addr, &format!("topic-{i:06}")).unwrap();
        assert_eq!(r.queues.len(), 8);
    }
    ns.shutdown();
    ns.join().unwrap();
}

/// A second name server on a port in use fails to start, instead of
/// sharing the port (and its brokers' registrations) with the first.
#[test]
fn a_second_name_server_on_a_port_in_use_is_refused() {
    let ns = namesrv();
    let second = ringmq_namesrv::start(NamesrvConfig {
        listen: ns.addr,
        heartbeat_interval: INTERVAL,
        cpu: None,
    });
    match second {
        Ok(_) => panic!("a second name server started on {}", ns.addr),
        Err(e) => assert!(e.to_string().contains(&ns.addr.to_string()), "{e}"),
    }
    ns.shutdown();
    ns.join().unwrap();
}
