//! ringmq broker: thread-per-core shards on glommio, each with its own
//! storage engine, listener and queues.
//!
//! # Layout
//! - [`store`]: the per-shard storage engine (commit log, queue indexes,
//!   consumer offsets, checkpoints, recovery) behind the [`store::Disk`] trait.
//! - `ringmq-broker` (src/main.rs): the broker process. Shards, listeners and
//!   the SPSC mesh arrive with issue #4.

pub mod store;
