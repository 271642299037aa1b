//! ringmq load generator.
//!
//! # Layout
//! - [`workload`]: what to run (flags or a TOML file).
//! - [`driver`]: runs a workload against ringmq with the native client:
//!   open-loop producers on a schedule, push consumers, progress.
//! - [`stats`]: payload stamps, HdrHistograms (merged, never averaged),
//!   per-second series, `--verify` checks.
//! - [`report`]: the final table, JSON + Markdown + SVG into `bench-results/`.
//! - `hrtimer`: sub-millisecond sleeps for the schedule (a timerfd per
//!   producer, read through io_uring).
//! - [`floor`]: what this host adds before any broker code runs: CPU
//!   stalls, direct-write latency, and a bare request path (the floor
//!   under every latency percentile).
//! - [`embedded`]: an in-process name server and broker (`quickstart`).
//! - [`verify`]: reading a topic back against an ack log.
//! - [`peers`]: Redis Streams and NATS JetStream drivers (small RESP and
//!   NATS protocol clients) and starting/stopping those servers.
//! - `ringmq-loadgen` (src/main.rs): the command line.

pub mod driver;
pub mod embedded;
pub mod floor;
mod hrtimer;
pub mod peers;
pub mod report;
pub mod stats;
pub mod verify;
pub mod workload;
