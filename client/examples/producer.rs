//! Sends messages and prints where each was stored.
//!
//! `RINGMQ_NAMESRV=127.0.0.1:9876 cargo run -p ringmq-client --example producer -- orders 10`

use ringmq_client::{runtime, Client, ClientConfig, Message, Producer, ProducerConfig};
use ringmq_core::TopicName;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let topic = TopicName::new(args.next().unwrap_or_else(|| "orders".into()))?;
    let count: usize = args.next().map_or(Ok(10), |n| n.parse())?;
    let namesrv = std::env::var("RINGMQ_NAMESRV").unwrap_or_else(|_| "127.0.0.1:9876".into());
    runtime()?.block_on(async move {
        let client = Client::new(ClientConfig::new([namesrv]))?;
        let producer = Producer::new(&client, ProducerConfig::default());
        for i in 0..count {
            let msg = Message::new(format!("hello {i}")).with_tag("greeting");
            let r = producer.send(&topic, msg).await?;
            println!(
                "stored in queue {} of {} at offset {}",
                r.queue.queue_id.0, r.queue.broker, r.offset
            );
        }
        Ok(())
    })
}
