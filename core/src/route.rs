//! Metadata types shared by brokers, name servers and clients: permissions,
//! roles, queue placement and core-aware routes.

use crate::name::{BrokerId, QueueId, ShardId, TopicName};
use crate::wire::{wire_enum, wire_struct, DecodeError, Reader, Wire};
use bytes::BytesMut;
use std::fmt;

/// What clients may do with a topic's queues: bit 2 read, bit 1 write (RocketMQ's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Perm(u8);

impl Perm {
    /// Queues may be read.
    pub const READ: Perm = Perm(1 << 2);
    /// Queues may be written.
    pub const WRITE: Perm = Perm(1 << 1);
    /// Read and write: what a new topic gets.
    pub const READ_WRITE: Perm = Perm(Self::READ.0 | Self::WRITE.0);
    /// Neither (a topic being drained or deleted).
    pub const NONE: Perm = Perm(0);

    /// From wire bits; `None` if an unknown bit is set.
    pub fn from_bits(bits: u8) -> Option<Self> {
        (bits & !Self::READ_WRITE.0 == 0).then_some(Perm(bits))
    }

    /// The wire bits.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether reads are allowed.
    pub fn readable(self) -> bool {
        self.0 & Self::READ.0 != 0
    }

    /// Whether writes are allowed.
    pub fn writable(self) -> bool {
        self.0 & Self::WRITE.0 != 0
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = if self.readable() { "r" } else { "-" };
        let w = if self.writable() { "w" } else { "-" };
        write!(f, "{r}{w}")
    }
}

impl Wire for Perm {
    const MIN_BYTES: usize = 1;
    fn put(&self, dst: &mut BytesMut) {
        self.0.put(dst);
    }
    fn get(src: &mut Reader<'_>, what: &'static str) -> Result<Self, DecodeError> {
        let bits = u8::get(src, what)?;
        Perm::from_bits(bits).ok_or(DecodeError::InvalidValue {
            what,
            value: bits.into(),
        })
    }
}

wire_enum! {
    /// A broker's role in its broker set.
    pub enum BrokerRole {
        /// Takes writes.
        Master = 0,
        /// Replicates a master; serves reads.
        Slave = 1,
    }
}

wire_enum! {
    /// How a consumer group divides a topic's messages.
    pub enum ConsumeMode {
        /// Each message goes to one member; queues are divided by rebalance.
        Clustering = 0,
        /// Every member gets every message and keeps its own offsets.
        Broadcasting = 1,
    }
}

wire_struct! {
    /// Which shard of its broker holds a queue.
    pub struct QueuePlacement {
        /// The queue.
        pub queue_id: QueueId,
        /// The shard that owns it.
        pub shard_id: ShardId,
    }
}

wire_struct! {
    /// A topic as one broker holds it.
    pub struct TopicDescription {
        /// The topic.
        pub topic: TopicName,
        /// Number of queues, numbered 0..queue_count.
        pub queue_count: u32,
        /// What clients may do.
        pub perm: Perm,
        /// One entry per queue: the table, not a hash, so a queue can move.
        pub placement: Vec<QueuePlacement>,
    }
}

wire_struct! {
    /// A shard's own listener, for core-aware clients.
    pub struct ShardRoute {
        /// The shard.
        pub shard_id: ShardId,
        /// `host:port` of its listener.
        pub addr: String,
    }
}

wire_struct! {
    /// A broker as a name server's cluster view shows it.
    pub struct BrokerInfo {
        /// The cluster it belongs to.
        pub cluster: String,
        /// Its route entry: name, id, role, front port and shards.
        pub route: BrokerRoute,
        /// Milliseconds since the name server last heard from it.
        pub last_heartbeat_ms_ago: u64,
        /// Its topic data version.
        pub data_version: u64,
        /// Topics it registered.
        pub topic_count: u32,
        /// Its software version.
        pub version: String,
    }
}

wire_struct! {
    /// A broker as routes name it.
    pub struct BrokerRoute {
        /// The broker set's name.
        pub broker_name: String,
        /// 0 for the master.
        pub broker_id: BrokerId,
        /// Master or slave.
        pub role: BrokerRole,
        /// `host:port` of the shared front port.
        pub front_addr: String,
        /// Every shard with its listener.
        pub shards: Vec<ShardRoute>,
    }
}

wire_struct! {
    /// Where one queue lives, down to the core.
    pub struct QueueRoute {
        /// The queue.
        pub queue_id: QueueId,
        /// The broker set that holds it (see [`TopicRoute::brokers`]).
        pub broker_name: String,
        /// The shard that owns it on each broker of that set.
        pub shard_id: ShardId,
        /// What clients may do.
        pub perm: Perm,
    }
}

wire_struct! {
    /// A topic's core-aware route: its queues and the brokers and shards holding them.
    pub struct TopicRoute {
        /// The topic.
        pub topic: TopicName,
        /// The brokers named by `queues`, each once.
        pub brokers: Vec<BrokerRoute>,
        /// Every queue.
        pub queues: Vec<QueueRoute>,
    }
}

wire_struct! {
    /// A consumer's interest in a topic.
    pub struct Subscription {
        /// The topic.
        pub topic: TopicName,
        /// `*` or tags joined by `||`.
        pub expression: String,
    }
}

wire_struct! {
    /// A consumer group member's identity as brokers see it.
    pub struct GroupMember {
        /// The client's id, unique per process.
        pub client_id: String,
        /// Its subscriptions.
        pub subscriptions: Vec<Subscription>,
    }
}

#[cfg(test)]
mod arbitrary {
    use super::*;
    use proptest::prelude::*;

    impl Arbitrary for Perm {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            (0u8..4).prop_map(|b| Perm(b << 1)).boxed()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode};

    #[test]
    fn perm_rejects_unknown_bits() {
        assert_eq!(Perm::from_bits(6), Some(Perm::READ_WRITE));
        assert_eq!(Perm::from_bits(1), None);
        assert!(decode::<Perm>(&[0x80], "perm").is_err());
        assert_eq!(Perm::READ_WRITE.to_string(), "rw");
    }

    #[test]
    fn route_round_trips() {
        let route = TopicRoute {
            topic: TopicName::new("orders").unwrap(),
            brokers: vec![BrokerRoute {
                broker_name: "b1".into(),
                broker_id: BrokerId::MASTER,
                role: BrokerRole::Master,
                front_addr: "127.0.0.1:9876".into(),
                shards: vec![ShardRoute {
                    shard_id: ShardId(0),
                    addr: "127.0.0.1:9877".into(),
                }],
            }],
            queues: vec![QueueRoute {
                queue_id: QueueId(0),
                broker_name: "b1".into(),
                shard_id: ShardId(0),
                perm: Perm::READ_WRITE,
            }],
        };
        assert_eq!(
            decode::<TopicRoute>(&encode(&route), "route").unwrap(),
            route
        );
    }
}
