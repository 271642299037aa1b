//! Consumes a topic in a group, printing each message, until Ctrl-C.
//!
//! `RINGMQ_NAMESRV=127.0.0.1:9876 cargo run -p ringmq-client --example push_consumer -- orders my-group`

use ringmq_client::{runtime, Client, ClientConfig, ConsumeResult, PushConfig, PushConsumer};
use ringmq_core::{GroupName, TopicName};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let topic = TopicName::new(args.next().unwrap_or_else(|| "orders".into()))?;
    let group = GroupName::new(args.next().unwrap_or_else(|| "example-group".into()))?;
    let namesrv = std::env::var("RINGMQ_NAMESRV").unwrap_or_else(|_| "127.0.0.1:9876".into());
    runtime()?.block_on(async move {
        let client = Client::new(ClientConfig::new([namesrv]))?;
        let consumer = PushConsumer::new(&client, PushConfig::new(group))?;
        consumer.subscribe(&topic, "*")?;
        consumer
            .start(|m| {
                println!(
                    "queue {} offset {}: {}",
                    m.queue.queue_id.0,
                    m.offset,
                    String::from_utf8_lossy(&m.body)
                );
                ConsumeResult::Success
            })
            .await?;
        loop {
            monoio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    })
}
