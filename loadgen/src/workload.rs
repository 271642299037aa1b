//! A workload: what to send, how fast, for how long, and who consumes.
//! Set by flags or a TOML file (`--workload FILE`, same names with `_`),
//! flags winning.

use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Workload flags (all optional; see [`Workload`] for defaults).
#[derive(Debug, Clone, Default, Args)]
pub struct WorkloadArgs {
    /// TOML file with any of the workload settings below.
    #[arg(long, value_name = "FILE")]
    pub workload: Option<PathBuf>,
    /// Topics. [default: 1]
    #[arg(long)]
    pub topics: Option<u32>,
    /// Queues per topic. [default: 8]
    #[arg(long)]
    pub queues: Option<u32>,
    /// Producers. [default: 1]
    #[arg(long)]
    pub producers: Option<u32>,
    /// Consumer groups (0: produce only). [default: 1]
    #[arg(long)]
    pub groups: Option<u32>,
    /// Consumers per group. [default: 1]
    #[arg(long)]
    pub consumers: Option<u32>,
    /// Message size in bytes (at least 24: producer id, sequence, send time). [default: 100]
    #[arg(long)]
    pub size: Option<usize>,
    /// Keys: `none`, `random`, or `set:N` (N fixed keys). [default: none]
    #[arg(long)]
    pub keys: Option<String>,
    /// Total producer rate in msg/s; 0 = as fast as possible. [default: 0]
    #[arg(long)]
    pub rate: Option<u64>,
    /// Seconds of measured run. [default: 20]
    #[arg(long)]
    pub duration: Option<u64>,
    /// Stop after this many messages instead (per run, warm-up excluded).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds of warm-up, not counted. [default: 3]
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Messages in flight per producer when --rate 0. [default: 4096]
    #[arg(long)]
    pub window: Option<usize>,
    /// Backlog phase: store this many messages with no consumer first,
    /// then start consumers from offset 0 while producers keep the rate.
    #[arg(long)]
    pub backlog: Option<u64>,
    /// Flush mode of an embedded broker: `async` or `sync`. [default: async]
    #[arg(long)]
    pub flush: Option<String>,
    /// Shards of an embedded broker. [default: 1]
    #[arg(long)]
    pub shards: Option<usize>,
    /// Producer batch linger in microseconds (0: batch what one pass queued). [default: 0]
    #[arg(long)]
    pub linger_us: Option<u64>,
    /// Queue choice for keyless messages: `sticky` (one queue per batch,
    /// then the next) or `round-robin` (the next queue per message).
    /// [default: sticky]
    #[arg(long)]
    pub spread: Option<String>,
    /// With --rate: a producer wakes at most once per this many µs and
    /// sends every message due by then (each timed from its own intended
    /// send time). Smaller is finer pacing and smaller requests. [default: 500]
    #[arg(long)]
    pub pace_us: Option<u64>,
    /// Embedded broker: most MiB a second each shard reads from disk for
    /// consumers behind the tail (unset or 0: no limit).
    #[arg(long)]
    pub catch_up_mib_per_sec: Option<u64>,
}

/// Resolved workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    pub topics: u32,
    pub queues: u32,
    pub producers: u32,
    pub groups: u32,
    pub consumers: u32,
    pub size: usize,
    pub keys: String,
    pub rate: u64,
    pub duration: u64,
    pub messages: Option<u64>,
    pub warmup: u64,
    pub window: usize,
    pub backlog: Option<u64>,
    pub flush: String,
    pub shards: usize,
    pub linger_us: u64,
    pub spread: String,
    pub pace_us: u64,
    pub catch_up_mib_per_sec: Option<u64>,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            topics: 1,
            queues: 8,
            producers: 1,
            groups: 1,
            consumers: 1,
            size: 100,
            keys: "none".into(),
            rate: 0,
            duration: 20,
            messages: None,
            warmup: 3,
            window: 4096,
            backlog: None,
            flush: "async".into(),
            shards: 1,
            linger_us: 0,
            spread: "sticky".into(),
            pace_us: 500,
            catch_up_mib_per_sec: None,
        }
    }
}

/// Smallest message: magic, producer id, sequence, send time.
pub const MIN_SIZE: usize = 24;

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    None,
    Random,
    Set(u32),
}

impl Workload {
    /// Flags over the file over defaults, checked.
    pub fn resolve(args: &WorkloadArgs) -> Result<Self, String> {
        let mut w: Workload = match &args.workload {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => Workload::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = args.$f.clone() { w.$f = v; } )* };
        }
        set!(
            topics, queues, producers, groups, consumers, size, keys, rate, duration, warmup,
            window, flush, shards, linger_us, spread, pace_us
        );
        if args.messages.is_some() {
            w.messages = args.messages;
        }
        if args.backlog.is_some() {
            w.backlog = args.backlog;
        }
        if args.catch_up_mib_per_sec.is_some() {
            w.catch_up_mib_per_sec = args.catch_up_mib_per_sec;
        }
        w.check()?;
        Ok(w)
    }

    fn check(&self) -> Result<(), String> {
        if self.topics == 0 || self.queues == 0 || self.producers == 0 {
            return Err("--topics, --queues and --producers must be at least 1".into());
        }
        if self.groups > 0 && self.consumers == 0 {
            return Err("--consumers must be at least 1 when --groups is".into());
        }
        if self.size < MIN_SIZE || self.size > 4 << 20 {
            return Err(format!("--size must be {MIN_SIZE} to 4194304 bytes"));
        }
        if self.rate > 0 && self.rate < u64::from(self.producers) {
            // A producer's share would be 0, which means full speed.
            return Err("--rate must be at least --producers (or 0 for full speed)".into());
        }
        if self.window == 0 {
            return Err("--window must be at least 1".into());
        }
        if !["async", "sync"].contains(&self.flush.as_str()) {
            return Err(format!("--flush {:?}: async or sync", self.flush));
        }
        if !["sticky", "round-robin"].contains(&self.spread.as_str()) {
            return Err(format!("--spread {:?}: sticky or round-robin", self.spread));
        }
        if self.shards == 0 {
            return Err("--shards must be at least 1".into());
        }
        if self.duration == 0 && self.messages.is_none() {
            return Err("--duration must be at least 1 (or set --messages)".into());
        }
        self.key_mode().map(|_| ())
    }

    /// The key distribution.
    pub fn key_mode(&self) -> Result<Keys, String> {
        match self.keys.as_str() {
            "none" => Ok(Keys::None),
            "random" => Ok(Keys::Random),
            s => s
                .strip_prefix("set:")
                .and_then(|n| n.parse().ok())
                .filter(|&n: &u32| n > 0)
                .map(Keys::Set)
                .ok_or_else(|| format!("--keys {s:?}: none, random or set:N")),
        }
    }
}
