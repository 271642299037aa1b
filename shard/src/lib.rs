//! ringmq broker: thread-per-core shards on glommio, each with its own
//! storage engine, listener and queues.
//!
//! # Layout
//! - [`store`]: the per-shard storage engine (commit log, queue indexes,
//!   consumer offsets, checkpoints, recovery) behind the [`store::Disk`] trait.
//! - [`broker`]: the broker process: shards on pinned glommio executors,
//!   per-shard and shared listeners, the SPSC mesh, topic metadata and the
//!   request handlers. `ringmq-broker` (src/main.rs) is its command line.

pub mod broker;
pub mod store;
