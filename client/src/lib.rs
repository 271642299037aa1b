//! ringmq native client library on monoio, and the ringmq admin CLI.
//!
//! # Layout
//! - [`client`]: settings, one pipelined connection per server address
//!   (`conn.rs`), the route cache; requests go straight to the shard that
//!   owns the queue.
//! - [`producer`]: batching with linger, queue selectors, retries.
//! - [`consumer`]: pull consumer; push consumer with tag filters,
//!   concurrent or orderly consumption, flow control, automatic commits,
//!   consumer groups (clustering with rebalance, broadcasting).
//! - [`admin`]: blocking request/answer connections and name server
//!   failover, for the admin CLI and tests.
//! - `ringmq` (src/main.rs): the admin CLI.
//!
//! The protocol (frames, headers, batches) lives in `ringmq-core` and the
//! state machines here use only futures' channels; monoio is used for
//! sockets, timers and spawning, so another transport can be added later.
//! Everything is single-threaded: run one [`client::Client`] per monoio
//! runtime (see [`runtime`]).

pub mod admin;
pub mod client;
mod conn;
pub mod consumer;
pub mod error;
pub mod producer;

pub use client::{Client, ClientConfig, QueueRef};
pub use consumer::{
    Allocation, ConsumeOrder, ConsumeResult, MessageView, PullConsumer, PullResult, PushConfig,
    PushConsumer, StartFrom, TagFilter,
};
pub use error::ClientError;
pub use producer::{Message, Producer, ProducerConfig, QueueSelector, SendResult};

/// Lets every other ready task run once, then continues (unlike a zero
/// sleep, which waits for the next timer tick).
pub async fn yield_now() {
    let mut yielded = false;
    futures::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

/// A monoio runtime for the client: io_uring where the kernel has it,
/// epoll otherwise, with timers.
pub fn runtime() -> std::io::Result<
    monoio::FusionRuntime<
        monoio::time::TimeDriver<monoio::IoUringDriver>,
        monoio::time::TimeDriver<monoio::LegacyDriver>,
    >,
> {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
}
