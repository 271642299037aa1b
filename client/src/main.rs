//! `ringmq`: the ringmq admin CLI. See `--help`.
//!
//! Exit codes: 0 done; 1 a server refused the request (the message says
//! why); 2 bad arguments; 3 no name server or broker could be reached.

use clap::{Parser, Subcommand};
use ringmq_client::admin::{AdminConn, AdminError, Namesrvs};
use ringmq_core::messages::*;
use ringmq_core::route::{BrokerInfo, Perm, TopicDescription, TopicRoute};
use ringmq_core::{ErrorCode, GroupName, QueueId, TopicName};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// ringmq admin: topics, cluster, brokers and consumer groups.
#[derive(Debug, Parser)]
#[command(name = "ringmq", version, about, long_about = None)]
struct Args {
    /// Name servers, comma-separated (tried in order).
    #[arg(long, env = "RINGMQ_NAMESRV", value_delimiter = ',', global = true)]
    namesrv: Vec<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Per-request timeout in ms.
    #[arg(long, default_value_t = 5000, global = true)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe, route and delete topics.
    #[command(subcommand)]
    Topic(TopicCmd),
    /// The brokers name servers know.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Per-shard counters of brokers.
    #[command(subcommand)]
    Broker(BrokerCmd),
    /// Consumer groups and their progress.
    #[command(subcommand)]
    Group(GroupCmd),
}

#[derive(Debug, Subcommand)]
enum TopicCmd {
    /// Create a topic on every master broker (or one), then wait for its route.
    Create {
        topic: String,
        /// Queues per broker.
        #[arg(long)]
        queues: u32,
        /// Only this broker.
        #[arg(long)]
        broker: Option<String>,
        /// `rw`, `r` or `w`.
        #[arg(long, default_value = "rw")]
        perm: String,
    },
    /// Every routed topic.
    List,
    /// Each broker's settings and placement of a topic.
    Describe { topic: String },
    /// The core-aware route: every queue with its broker, shard and address.
    Route { topic: String },
    /// Delete a topic from every broker that has it.
    Delete { topic: String },
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Brokers, shards with addresses, last heartbeat, version.
    List,
}

#[derive(Debug, Subcommand)]
enum BrokerCmd {
    /// Counters of every shard of every broker (or one).
    Status {
        #[arg(long)]
        broker: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCmd {
    /// Groups with committed offsets, and the brokers that have them.
    List,
    /// Committed offset, max offset and lag per queue of a topic.
    Progress {
        group: String,
        #[arg(long)]
        topic: String,
    },
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Self {
        let code = match e {
            AdminError::Unreachable { .. } => 3,
            _ => 1,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

struct Ctx {
    ns: Namesrvs,
    json: bool,
    timeout: Duration,
}

impl Ctx {
    fn broker(&self, addr: &str) -> Result<AdminConn, Failure> {
        AdminConn::connect(addr, self.timeout).map_err(Failure::from)
    }

    fn masters(&self, only: Option<&str>) -> Result<Vec<BrokerInfo>, Failure> {
        let brokers: Vec<BrokerInfo> = self
            .ns
            .call(ClusterInfoRequest {})?
            .brokers
            .into_iter()
            .filter(|b| b.route.broker_id.0 == 0)
            .filter(|b| only.is_none_or(|n| b.route.broker_name == n))
            .collect();
        if brokers.is_empty() {
            return Err(Failure {
                code: 1,
                message: match only {
                    Some(n) => format!("no live broker named {n}"),
                    None => "no live broker is registered".into(),
                },
            });
        }
        Ok(brokers)
    }
}

fn topic_name(s: &str) -> Result<TopicName, Failure> {
    TopicName::new(s).map_err(|e| usage(e.to_string()))
}

/// Prints rows as aligned columns.
fn table(head: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn perm_text(p: Perm) -> &'static str {
    match (p.readable(), p.writable()) {
        (true, true) => "rw",
        (true, false) => "r",
        (false, true) => "w",
        (false, false) => "-",
    }
}

fn describe_json(d: &TopicDescription) -> Value {
    json!({
        "topic": d.topic.as_str(), "queue_count": d.queue_count, "perm": perm_text(d.perm),
        "placement": d.placement.iter().map(|p| json!({"queue": p.queue_id.0, "shard": p.shard_id.0})).collect::<Vec<_>>(),
    })
}

fn route_rows(route: &TopicRoute) -> Vec<(u32, String, u16, String, &'static str)> {
    let addr: BTreeMap<(String, u16), String> = route
        .brokers
        .iter()
        .flat_map(|b| {
            b.shards
                .iter()
                .map(move |s| ((b.broker_name.clone(), s.shard_id.0), s.addr.clone()))
        })
        .collect();
    let mut rows: Vec<_> = route
        .queues
        .iter()
        .map(|q| {
            (
                q.queue_id.0,
                q.broker_name.clone(),
                q.shard_id.0,
                addr.get(&(q.broker_name.clone(), q.shard_id.0))
                    .cloned()
                    .unwrap_or_default(),
                perm_text(q.perm),
            )
        })
        .collect();
    rows.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
    rows
}

fn run(args: Args) -> Result<(), Failure> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    if args.namesrv.is_empty() {
        return Err(usage(
            "no name server: pass --namesrv HOST:PORT or set RINGMQ_NAMESRV",
        ));
    }
    let ctx = Ctx {
        ns: Namesrvs::new(args.namesrv.clone(), timeout),
        json: args.json,
        timeout,
    };
    match args.command {
        Command::Topic(cmd) => topic(&ctx, cmd),
        Command::Cluster(ClusterCmd::List) => cluster(&ctx),
        Command::Broker(BrokerCmd::Status { broker }) => status(&ctx, broker.as_deref()),
        Command::Group(GroupCmd::List) => groups(&ctx),
        Command::Group(GroupCmd::Progress { group, topic }) => progress(&ctx, &group, &topic),
    }
}

fn topic(ctx: &Ctx, cmd: TopicCmd) -> Result<(), Failure> {
    match cmd {
        TopicCmd::Create {
            topic,
            queues,
            broker,
            perm,
        } => {
            let name = TopicName::user(topic.as_str()).map_err(|e| usage(e.to_string()))?;
            let perm = match perm.as_str() {
                "rw" => Perm::READ_WRITE,
                "r" => Perm::READ,
                "w" => Perm::WRITE,
                other => return Err(usage(format!("--perm {other:?}: rw, r or w"))),
            };
            if queues == 0 {
                return Err(usage("--queues must be at least 1"));
            }
            let mut created = Vec::new();
            for b in ctx.masters(broker.as_deref())? {
                let d = ctx.broker(&b.route.front_addr)?.call(CreateTopicRequest {
                    topic: name.clone(),
                    queue_count: queues,
                    perm,
                })?;
                created.push((b.route.broker_name.clone(), d));
            }
            // The brokers register the change at once; wait until routed.
            let deadline = Instant::now() + Duration::from_secs(5);
            let routed = loop {
                match ctx.ns.call(QueryRouteRequest {
                    topic: name.clone(),
                }) {
                    Ok(r) if r.brokers.len() >= created.len() => break Some(r),
                    _ if Instant::now() >= deadline => break None,
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            if ctx.json {
                println!(
                    "{}",
                    json!({"created": created.iter().map(|(b, d)| json!({"broker": b, "topic": describe_json(d)})).collect::<Vec<_>>(), "routed": routed.is_some()})
                );
            } else {
                for (b, d) in &created {
                    println!("created {} on {b}: {} queues", d.topic, d.queue_count);
                }
                if routed.is_none() {
                    println!("warning: the route is not visible on the name server yet");
                }
            }
            Ok(())
        }
        TopicCmd::List => {
            let topics = ctx.ns.call(ListTopicsRequest {})?.topics;
            if ctx.json {
                println!(
                    "{}",
                    json!(topics.iter().map(|t| t.as_str()).collect::<Vec<_>>())
                );
            } else {
                for t in topics {
                    println!("{t}");
                }
            }
            Ok(())
        }
        TopicCmd::Describe { topic } => {
            let name = topic_name(&topic)?;
            let route = ctx.ns.call(QueryRouteRequest {
                topic: name.clone(),
            })?;
            let mut out = Vec::new();
            for b in &route.brokers {
                let d = ctx.broker(&b.front_addr)?.call(DescribeTopicRequest {
                    topic: name.clone(),
                })?;
                out.push((b.broker_name.clone(), d));
            }
            if ctx.json {
                println!(
                    "{}",
                    json!(out
                        .iter()
                        .map(|(b, d)| json!({"broker": b, "topic": describe_json(d)}))
                        .collect::<Vec<_>>())
                );
            } else {
                let rows: Vec<Vec<String>> = out
                    .iter()
                    .flat_map(|(b, d)| {
                        d.placement.iter().map(move |p| {
                            vec![
                                b.clone(),
                                p.queue_id.0.to_string(),
                                p.shard_id.0.to_string(),
                                perm_text(d.perm).to_owned(),
                            ]
                        })
                    })
                    .collect();
                table(&["BROKER", "QUEUE", "SHARD", "PERM"], &rows);
            }
            Ok(())
        }
        TopicCmd::Route { topic } => {
            let route = ctx.ns.call(QueryRouteRequest {
                topic: topic_name(&topic)?,
            })?;
            let rows = route_rows(&route);
            if ctx.json {
                println!(
                    "{}",
                    json!({
                        "topic": route.topic.as_str(),
                        "brokers": route.brokers.iter().map(|b| json!({"name": b.broker_name, "front": b.front_addr, "shards": b.shards.iter().map(|s| json!({"shard": s.shard_id.0, "addr": s.addr})).collect::<Vec<_>>()})).collect::<Vec<_>>(),
                        "queues": rows.iter().map(|r| json!({"queue": r.0, "broker": r.1, "shard": r.2, "addr": r.3, "perm": r.4})).collect::<Vec<_>>(),
                    })
                );
            } else {
                let rows: Vec<Vec<String>> = rows
                    .into_iter()
                    .map(|r| vec![r.0.to_string(), r.1, r.2.to_string(), r.3, r.4.into()])
                    .collect();
                table(&["QUEUE", "BROKER", "SHARD", "SHARD ADDR", "PERM"], &rows);
            }
            Ok(())
        }
        TopicCmd::Delete { topic } => {
            let name = topic_name(&topic)?;
            let route = ctx.ns.call(QueryRouteRequest {
                topic: name.clone(),
            })?;
            for b in &route.brokers {
                ctx.broker(&b.front_addr)?.call(DeleteTopicRequest {
                    topic: name.clone(),
                })?;
                if !ctx.json {
                    println!("deleted {name} on {}", b.broker_name);
                }
            }
            if ctx.json {
                println!(
                    "{}",
                    json!({"deleted": name.as_str(), "brokers": route.brokers.len()})
                );
            }
            Ok(())
        }
    }
}

fn cluster(ctx: &Ctx) -> Result<(), Failure> {
    let brokers = ctx.ns.call(ClusterInfoRequest {})?.brokers;
    if ctx.json {
        println!("{}", json!(brokers.iter().map(|b| json!({
            "cluster": b.cluster, "broker": b.route.broker_name, "id": b.route.broker_id.0,
            "front": b.route.front_addr, "shards": b.route.shards.iter().map(|s| json!({"shard": s.shard_id.0, "addr": s.addr})).collect::<Vec<_>>(),
            "last_heartbeat_ms_ago": b.last_heartbeat_ms_ago, "topics": b.topic_count, "version": b.version,
        })).collect::<Vec<_>>()));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = brokers
        .iter()
        .map(|b| {
            vec![
                b.cluster.clone(),
                b.route.broker_name.clone(),
                b.route.broker_id.0.to_string(),
                b.route.front_addr.clone(),
                b.route
                    .shards
                    .iter()
                    .map(|s| format!("{}={}", s.shard_id.0, s.addr))
                    .collect::<Vec<_>>()
                    .join(" "),
                format!("{} ms ago", b.last_heartbeat_ms_ago),
                b.topic_count.to_string(),
                b.version.clone(),
            ]
        })
        .collect();
    table(
        &[
            "CLUSTER",
            "BROKER",
            "ID",
            "FRONT",
            "SHARDS",
            "HEARTBEAT",
            "TOPICS",
            "VERSION",
        ],
        &rows,
    );
    Ok(())
}

fn status(ctx: &Ctx, only: Option<&str>) -> Result<(), Failure> {
    let mut all = Vec::new();
    for b in ctx.masters(only)? {
        all.push(
            ctx.broker(&b.route.front_addr)?
                .call(BrokerStatusRequest {})?,
        );
    }
    if ctx.json {
        println!("{}", json!(all.iter().map(|s| json!({"broker": s.broker_name, "shards": s.shards.iter().map(|x| json!({
            "shard": x.shard_id.0, "addr": x.addr, "connections": x.connections, "in_flight": x.in_flight,
            "parked_fetches": x.parked_fetches, "queues": x.queues, "bytes_in": x.bytes_in, "bytes_out": x.bytes_out,
            "records_in": x.records_in, "records_out": x.records_out, "forwarded": x.forwarded,
        })).collect::<Vec<_>>()})).collect::<Vec<_>>()));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .flat_map(|s| {
            s.shards.iter().map(move |x| {
                vec![
                    s.broker_name.clone(),
                    x.shard_id.0.to_string(),
                    x.addr.clone(),
                    x.connections.to_string(),
                    x.in_flight.to_string(),
                    x.parked_fetches.to_string(),
                    x.queues.to_string(),
                    x.records_in.to_string(),
                    x.records_out.to_string(),
                    x.bytes_in.to_string(),
                    x.bytes_out.to_string(),
                    x.forwarded.to_string(),
                ]
            })
        })
        .collect();
    table(
        &[
            "BROKER",
            "SHARD",
            "ADDR",
            "CONNS",
            "IN-FLIGHT",
            "PARKED",
            "QUEUES",
            "RECORDS IN",
            "RECORDS OUT",
            "BYTES IN",
            "BYTES OUT",
            "FORWARDED",
        ],
        &rows,
    );
    Ok(())
}

fn groups(ctx: &Ctx) -> Result<(), Failure> {
    let mut by_group: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in ctx.masters(None)? {
        for g in ctx
            .broker(&b.route.front_addr)?
            .call(ListGroupsRequest {})?
            .groups
        {
            by_group
                .entry(g.as_str().to_owned())
                .or_default()
                .push(b.route.broker_name.clone());
        }
    }
    if ctx.json {
        println!("{}", json!(by_group));
    } else {
        let rows: Vec<Vec<String>> = by_group
            .into_iter()
            .map(|(g, b)| vec![g, b.join(",")])
            .collect();
        table(&["GROUP", "BROKERS"], &rows);
    }
    Ok(())
}

fn progress(ctx: &Ctx, group: &str, topic: &str) -> Result<(), Failure> {
    let group = GroupName::new(group).map_err(|e| usage(e.to_string()))?;
    let name = topic_name(topic)?;
    let route = ctx.ns.call(QueryRouteRequest {
        topic: name.clone(),
    })?;
    let mut rows = Vec::new();
    let mut conns: BTreeMap<String, AdminConn> = BTreeMap::new();
    for (queue, broker, _, addr, _) in route_rows(&route) {
        if !conns.contains_key(&addr) {
            conns.insert(addr.clone(), ctx.broker(&addr)?);
        }
        let Some(conn) = conns.get_mut(&addr) else {
            continue;
        };
        let offsets = conn.call(QueryQueueOffsetsRequest {
            topic: name.clone(),
            queue_id: QueueId(queue),
        })?;
        let committed = match conn.call(QueryConsumerOffsetRequest {
            group: group.clone(),
            topic: name.clone(),
            queue_id: QueueId(queue),
        }) {
            Ok(r) => r.offset,
            Err(e) if e.code() == Some(ErrorCode::OffsetNotFound) => None,
            Err(e) => return Err(e.into()),
        };
        let lag = offsets
            .max_offset
            .saturating_sub(committed.unwrap_or(offsets.min_offset));
        rows.push((broker, queue, committed, offsets.max_offset, lag));
    }
    if ctx.json {
        println!(
            "{}",
            json!({"group": group.as_str(), "topic": name.as_str(), "queues": rows.iter().map(|r| json!({"broker": r.0, "queue": r.1, "committed": r.2, "max_offset": r.3, "lag": r.4})).collect::<Vec<_>>(), "total_lag": rows.iter().map(|r| r.4).sum::<u64>()})
        );
    } else {
        let total: u64 = rows.iter().map(|r| r.4).sum();
        let mut text: Vec<Vec<String>> = rows
            .into_iter()
            .map(|r| {
                vec![
                    r.0,
                    r.1.to_string(),
                    r.2.map_or_else(|| "-".into(), |o| o.to_string()),
                    r.3.to_string(),
                    r.4.to_string(),
                ]
            })
            .collect();
        text.push(vec![
            "total".into(),
            String::new(),
            String::new(),
            String::new(),
            total.to_string(),
        ]);
        table(
            &["BROKER", "QUEUE", "COMMITTED", "MAX OFFSET", "LAG"],
            &text,
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("ringmq: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
