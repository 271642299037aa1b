//! Key-ordered messages: an order's events share a key, so they land on one
//! queue and an orderly consumer sees them in sequence.
//!
//! `RINGMQ_NAMESRV=127.0.0.1:9876 cargo run -p ringmq-client --example ordered -- orders`

use ringmq_client::{
    runtime, Client, ClientConfig, ConsumeOrder, ConsumeResult, Message, Producer, ProducerConfig,
    PushConfig, PushConsumer, QueueSelector,
};
use ringmq_core::{GroupName, TopicName};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let topic = TopicName::new(std::env::args().nth(1).unwrap_or_else(|| "orders".into()))?;
    let namesrv = std::env::var("RINGMQ_NAMESRV").unwrap_or_else(|_| "127.0.0.1:9876".into());
    runtime()?.block_on(async move {
        let client = Client::new(ClientConfig::new([namesrv]))?;
        let producer = Producer::new(
            &client,
            ProducerConfig {
                selector: QueueSelector::KeyHash,
                ..Default::default()
            },
        );
        for order in 0..3 {
            for step in ["created", "paid", "shipped"] {
                let msg = Message::new(format!("order {order}: {step}"))
                    .with_key(format!("order-{order}"));
                producer.send(&topic, msg).await?;
            }
        }
        let mut cfg = PushConfig::new(GroupName::new("ordered-example")?);
        cfg.order = ConsumeOrder::Orderly;
        let consumer = PushConsumer::new(&client, cfg)?;
        consumer.subscribe(&topic, "*")?;
        consumer
            .start(|m| {
                println!("{}", String::from_utf8_lossy(&m.body));
                ConsumeResult::Success
            })
            .await?;
        monoio::time::sleep(Duration::from_secs(3)).await;
        consumer.shutdown().await;
        Ok(())
    })
}
