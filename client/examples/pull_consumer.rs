//! Reads every queue of a topic from the group's committed offset (or the
//! start), long-polling at the end, and commits as it goes.
//!
//! `RINGMQ_NAMESRV=127.0.0.1:9876 cargo run -p ringmq-client --example pull_consumer -- orders`

use ringmq_client::{runtime, Client, ClientConfig, PullConsumer};
use ringmq_core::{GroupName, TopicName};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let topic = TopicName::new(std::env::args().nth(1).unwrap_or_else(|| "orders".into()))?;
    let namesrv = std::env::var("RINGMQ_NAMESRV").unwrap_or_else(|_| "127.0.0.1:9876".into());
    runtime()?.block_on(async move {
        let client = Client::new(ClientConfig::new([namesrv]))?;
        let consumer = PullConsumer::new(&client, GroupName::new("pull-example")?);
        for q in consumer.queues(&topic).await? {
            let mut offset = consumer.committed(&q).await?.unwrap_or(0);
            loop {
                let r = consumer
                    .pull(&q, offset, 1 << 20, Duration::from_millis(500))
                    .await?;
                for m in &r.messages {
                    println!(
                        "queue {} offset {}: {}",
                        q.queue_id.0,
                        m.offset,
                        String::from_utf8_lossy(&m.body)
                    );
                }
                if r.next_offset == offset {
                    break;
                }
                offset = r.next_offset;
                consumer.commit(&q, offset).await?;
            }
        }
        Ok(())
    })
}
