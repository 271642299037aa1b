//! ringmq broker: thread-per-core shards on glommio, each with its own store and listener.
//!
//! # Layout
//! - `ringmq-broker` (src/main.rs): the broker process; storage arrives in `store/` (issue #3), shards, listeners and the SPSC mesh in `net/` and `mesh` (issue #4).
//!
//! Nothing else is here yet: issue #4 builds this crate on `ringmq-core`.
