//! The protocol's requests and responses: one stable request code per
//! operation, a typed request header and a typed response header for each.
//!
//! Bodies are not part of the typed headers: a send carries one record batch
//! as its body, a fetch response carries whole stored batches back to back.
//! A failed request is answered by a response frame with the `ERROR` flag
//! and an [`ErrorResponse`] header instead of the typed one.

use crate::error_code::ErrorCode;
use crate::name::{BrokerId, GroupName, QueueId, ShardId, TopicName};
use crate::route::{
    BrokerInfo, BrokerRole, ConsumeMode, Perm, ShardRoute, Subscription, TopicDescription,
    TopicRoute,
};
use crate::wire::{wire_struct, DecodeError, Reader, Wire};
use bytes::BytesMut;

/// Why a frame's typed header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The request code is not one this build knows.
    #[error("unknown request code {0}")]
    UnknownCode(u16),
    /// The header bytes do not decode as the code's header.
    #[error("{code:?} header: {source}")]
    Decode {
        /// The request code whose header failed.
        code: RequestCode,
        /// What went wrong.
        source: DecodeError,
    },
}

impl HeaderError {
    /// The error code to answer with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            HeaderError::UnknownCode(_) => ErrorCode::UnknownRequestCode,
            HeaderError::Decode {
                source: DecodeError::InvalidName { .. },
                ..
            } => ErrorCode::InvalidName,
            HeaderError::Decode { .. } => ErrorCode::Malformed,
        }
    }
}

/// A typed request header that names its response.
pub trait Call: Wire + Into<Request> {
    /// The request code.
    const CODE: RequestCode;
    /// The response header a success carries.
    type Response: Wire;
    /// Extracts this call's response from a decoded one; `None` if another code's.
    fn response_of(response: Response) -> Option<Self::Response>;
}

macro_rules! messages {
    ($( $(#[$m:meta])* $code:ident = $num:literal : $req:ident => $resp:ident; )*) => {
        /// A request code on the wire. Numbers are stable and never reused.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[repr(u16)]
        #[non_exhaustive]
        pub enum RequestCode { $( $(#[$m])* $code = $num, )* }

        impl RequestCode {
            /// Every code, in number order.
            pub const ALL: &'static [RequestCode] = &[$(RequestCode::$code),*];

            /// The number on the wire.
            pub fn as_u16(self) -> u16 {
                self as u16
            }

            /// The code for a number, if this build knows it.
            pub fn from_u16(n: u16) -> Option<Self> {
                match n {
                    $( $num => Some(RequestCode::$code), )*
                    _ => None,
                }
            }

            /// The name `PROTOCOL.md` uses.
            pub fn name(self) -> &'static str {
                match self {
                    $( RequestCode::$code => stringify!($code), )*
                }
            }
        }

        /// A decoded request header.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        #[non_exhaustive]
        pub enum Request { $( $(#[$m])* $code($req), )* }

        impl Request {
            /// Its request code.
            pub fn code(&self) -> RequestCode {
                match self {
                    $( Request::$code(_) => RequestCode::$code, )*
                }
            }

            /// Appends the header's encoding.
            pub fn encode_header(&self, dst: &mut BytesMut) {
                match self {
                    $( Request::$code(h) => h.put(dst), )*
                }
            }

            /// Decodes the header of a request with code `code`.
            pub fn decode(code: u16, header: &[u8]) -> Result<Self, HeaderError> {
                let code = RequestCode::from_u16(code).ok_or(HeaderError::UnknownCode(code))?;
                let mut reader = Reader::new(header);
                let request = match code {
                    $( RequestCode::$code => <$req as Wire>::get(&mut reader, stringify!($req))
                        .map(Request::$code), )*
                };
                request
                    .and_then(|r| reader.finish().map(|()| r))
                    .map_err(|source| HeaderError::Decode { code, source })
            }
        }

        /// A decoded success response header.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        #[non_exhaustive]
        pub enum Response { $( $(#[$m])* $code($resp), )* }

        impl Response {
            /// The request code it answers.
            pub fn code(&self) -> RequestCode {
                match self {
                    $( Response::$code(_) => RequestCode::$code, )*
                }
            }

            /// Appends the header's encoding.
            pub fn encode_header(&self, dst: &mut BytesMut) {
                match self {
                    $( Response::$code(h) => h.put(dst), )*
                }
            }

            /// Decodes the success header of a response to code `code`.
            pub fn decode(code: u16, header: &[u8]) -> Result<Self, HeaderError> {
                let code = RequestCode::from_u16(code).ok_or(HeaderError::UnknownCode(code))?;
                let mut reader = Reader::new(header);
                let response = match code {
                    $( RequestCode::$code => <$resp as Wire>::get(&mut reader, stringify!($resp))
                        .map(Response::$code), )*
                };
                response
                    .and_then(|r| reader.finish().map(|()| r))
                    .map_err(|source| HeaderError::Decode { code, source })
            }
        }

        $(
            impl From<$req> for Request {
                fn from(h: $req) -> Self {
                    Request::$code(h)
                }
            }

            impl Call for $req {
                const CODE: RequestCode = RequestCode::$code;
                type Response = $resp;
                fn response_of(response: Response) -> Option<$resp> {
                    match response {
                        Response::$code(r) => Some(r),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
            }
        )*
    };
}

messages! {
    /// Append one record batch (the body) to a queue.
    SendBatch = 1: SendBatchRequest => SendBatchResponse;
    /// Read stored batches from an offset, waiting up to `max_wait_ms` at the end.
    Fetch = 2: FetchRequest => FetchResponse;
    /// Store a consumer group's offset for a queue.
    CommitOffset = 3: CommitOffsetRequest => Ack;
    /// Read a consumer group's committed offset for a queue.
    QueryConsumerOffset = 4: QueryConsumerOffsetRequest => QueryConsumerOffsetResponse;
    /// Read a queue's earliest and next offsets.
    QueryQueueOffsets = 5: QueryQueueOffsetsRequest => QueryQueueOffsetsResponse;
    /// Read a broker's per-shard counters.
    BrokerStatus = 6: BrokerStatusRequest => BrokerStatusResponse;
    /// List the consumer groups with committed offsets on a broker.
    ListGroups = 7: ListGroupsRequest => ListGroupsResponse;
    /// Create a topic on a broker, which places its queues on shards.
    CreateTopic = 10: CreateTopicRequest => TopicDescription;
    /// Read a topic's settings and placement from a broker.
    DescribeTopic = 11: DescribeTopicRequest => TopicDescription;
    /// Delete a topic from a broker.
    DeleteTopic = 12: DeleteTopicRequest => Ack;
    /// Ask a name server for a topic's core-aware route.
    QueryRoute = 13: QueryRouteRequest => TopicRoute;
    /// Ask a name server for every topic it routes.
    ListTopics = 14: ListTopicsRequest => ListTopicsResponse;
    /// Ask a name server for its live brokers.
    ClusterInfo = 15: ClusterInfoRequest => ClusterInfoResponse;
    /// A broker announces itself and (a chunk of) its topics to a name server.
    RegisterBroker = 20: RegisterBrokerRequest => RegisterBrokerResponse;
    /// A broker tells a name server it is alive.
    BrokerHeartbeat = 21: BrokerHeartbeatRequest => BrokerHeartbeatResponse;
    /// A consumer tells a broker it is a live member of a group.
    GroupHeartbeat = 30: GroupHeartbeatRequest => GroupHeartbeatResponse;
}

wire_struct! {
    /// An empty success.
    pub struct Ack {}
}

wire_struct! {
    /// Header of [`RequestCode::SendBatch`]; the body is one record batch.
    pub struct SendBatchRequest {
        /// The topic.
        pub topic: TopicName,
        /// The queue; must equal the batch header's queue id.
        pub queue_id: QueueId,
    }
}

wire_struct! {
    /// The batch is stored (and durable per the broker's flush mode).
    pub struct SendBatchResponse {
        /// The queue.
        pub queue_id: QueueId,
        /// Offset of the batch's first record; the rest follow densely.
        pub base_offset: u64,
        /// Number of records stored.
        pub record_count: u32,
        /// The broker's store time, stamped into the batch.
        pub store_timestamp_ms: i64,
    }
}

wire_struct! {
    /// Header of [`RequestCode::Fetch`].
    pub struct FetchRequest {
        /// The topic.
        pub topic: TopicName,
        /// The queue.
        pub queue_id: QueueId,
        /// First offset wanted.
        pub offset: u64,
        /// Soft cap on the body; at least one whole batch is returned if any is there.
        pub max_bytes: u32,
        /// How long to wait at the end of the queue for new records (0: answer at once).
        pub max_wait_ms: u32,
    }
}

wire_struct! {
    /// Header of a fetch answer; the body is whole stored batches, back to back.
    pub struct FetchResponse {
        /// The queue.
        pub queue_id: QueueId,
        /// Where to fetch next.
        pub next_offset: u64,
        /// The earliest offset still stored.
        pub min_offset: u64,
        /// The offset the next appended record will get.
        pub max_offset: u64,
    }
}

wire_struct! {
    /// Header of [`RequestCode::CommitOffset`].
    pub struct CommitOffsetRequest {
        /// The consumer group.
        pub group: GroupName,
        /// The topic.
        pub topic: TopicName,
        /// The queue.
        pub queue_id: QueueId,
        /// The next offset the group will consume.
        pub offset: u64,
    }
}

wire_struct! {
    /// Header of [`RequestCode::QueryConsumerOffset`].
    pub struct QueryConsumerOffsetRequest {
        /// The consumer group.
        pub group: GroupName,
        /// The topic.
        pub topic: TopicName,
        /// The queue.
        pub queue_id: QueueId,
    }
}

wire_struct! {
    /// A group's committed offset.
    pub struct QueryConsumerOffsetResponse {
        /// `None` when the group never committed on this queue.
        pub offset: Option<u64>,
    }
}

wire_struct! {
    /// Header of [`RequestCode::QueryQueueOffsets`].
    pub struct QueryQueueOffsetsRequest {
        /// The topic.
        pub topic: TopicName,
        /// The queue.
        pub queue_id: QueueId,
    }
}

wire_struct! {
    /// A queue's offset range.
    pub struct QueryQueueOffsetsResponse {
        /// The earliest offset still stored.
        pub min_offset: u64,
        /// The offset the next appended record will get.
        pub max_offset: u64,
    }
}

wire_struct! {
    /// Header of [`RequestCode::BrokerStatus`].
    pub struct BrokerStatusRequest {}
}

wire_struct! {
    /// One shard's counters since the broker started.
    pub struct ShardStatus {
        /// The shard.
        pub shard_id: ShardId,
        /// `host:port` of the shard's own listener.
        pub addr: String,
        /// Open client connections on this shard.
        pub connections: u64,
        /// Requests being handled now (this shard's request queue depth).
        pub in_flight: u64,
        /// Long-polling fetches parked now.
        pub parked_fetches: u64,
        /// Queues stored on this shard.
        pub queues: u64,
        /// Frame bytes read from clients.
        pub bytes_in: u64,
        /// Frame bytes written to clients.
        pub bytes_out: u64,
        /// Records appended.
        pub records_in: u64,
        /// Records returned by fetches (whole batches counted).
        pub records_out: u64,
        /// Requests forwarded to other shards over the mesh.
        pub forwarded: u64,
    }
}

wire_struct! {
    /// A broker's status.
    pub struct BrokerStatusResponse {
        /// The broker's name.
        pub broker_name: String,
        /// Every shard, by id.
        pub shards: Vec<ShardStatus>,
    }
}

wire_struct! {
    /// Header of [`RequestCode::ListGroups`].
    pub struct ListGroupsRequest {}
}

wire_struct! {
    /// Consumer groups with a committed offset on any queue of the broker, sorted.
    pub struct ListGroupsResponse {
        /// The groups.
        pub groups: Vec<GroupName>,
    }
}

wire_struct! {
    /// Header of [`RequestCode::CreateTopic`].
    pub struct CreateTopicRequest {
        /// The topic; reserved prefixes are refused.
        pub topic: TopicName,
        /// Number of queues (at least 1).
        pub queue_count: u32,
        /// What clients may do.
        pub perm: Perm,
    }
}

wire_struct! {
    /// Header of [`RequestCode::DescribeTopic`].
    pub struct DescribeTopicRequest {
        /// The topic.
        pub topic: TopicName,
    }
}

wire_struct! {
    /// Header of [`RequestCode::DeleteTopic`].
    pub struct DeleteTopicRequest {
        /// The topic.
        pub topic: TopicName,
    }
}

wire_struct! {
    /// Header of [`RequestCode::QueryRoute`].
    pub struct QueryRouteRequest {
        /// The topic.
        pub topic: TopicName,
    }
}

wire_struct! {
    /// Header of [`RequestCode::ListTopics`].
    pub struct ListTopicsRequest {}
}

wire_struct! {
    /// Every topic a name server routes, sorted.
    pub struct ListTopicsResponse {
        /// The topics.
        pub topics: Vec<TopicName>,
    }
}

wire_struct! {
    /// Header of [`RequestCode::ClusterInfo`].
    pub struct ClusterInfoRequest {}
}

wire_struct! {
    /// A name server's live brokers, sorted by name and id.
    pub struct ClusterInfoResponse {
        /// The brokers.
        pub brokers: Vec<BrokerInfo>,
    }
}

wire_struct! {
    /// Header of [`RequestCode::RegisterBroker`]. A broker with many topics
    /// sends several chunks that share `data_version`; the name server
    /// replaces the broker's topics once chunk `chunk_count - 1` arrives, so no
    /// single frame has to hold them all.
    pub struct RegisterBrokerRequest {
        /// The cluster the broker belongs to.
        pub cluster: String,
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
        /// Bumped whenever the broker's topics change.
        pub data_version: u64,
        /// This chunk's index, from 0.
        pub chunk_index: u32,
        /// Number of chunks in this registration (at least 1).
        pub chunk_count: u32,
        /// The topics in this chunk.
        pub topics: Vec<TopicDescription>,
        /// The broker's software version, for the cluster view.
        pub version: String,
    }
}

wire_struct! {
    /// A name server's answer to a registration.
    pub struct RegisterBrokerResponse {
        /// How often the name server expects heartbeats.
        pub heartbeat_interval_ms: u32,
    }
}

wire_struct! {
    /// Header of [`RequestCode::BrokerHeartbeat`].
    pub struct BrokerHeartbeatRequest {
        /// The broker set's name.
        pub broker_name: String,
        /// 0 for the master.
        pub broker_id: BrokerId,
        /// The version of the broker's topics.
        pub data_version: u64,
    }
}

wire_struct! {
    /// A name server's answer to a heartbeat.
    pub struct BrokerHeartbeatResponse {
        /// The name server does not know this broker at this `data_version`
        /// (it restarted, or dropped the broker): register again in full.
        pub reregister: bool,
    }
}

wire_struct! {
    /// Header of [`RequestCode::GroupHeartbeat`].
    pub struct GroupHeartbeatRequest {
        /// The consumer group.
        pub group: GroupName,
        /// The member's client id.
        pub client_id: String,
        /// Clustering or broadcasting.
        pub mode: ConsumeMode,
        /// The member's subscriptions.
        pub subscriptions: Vec<Subscription>,
    }
}

wire_struct! {
    /// The group's live members, sorted, for rebalancing.
    pub struct GroupHeartbeatResponse {
        /// Client ids of live members.
        pub members: Vec<String>,
    }
}

wire_struct! {
    /// Header of every error response (response frames with the `ERROR` flag).
    pub struct ErrorResponse {
        /// What went wrong.
        pub code: ErrorCode,
        /// For people: a sentence naming the thing that failed.
        pub message: String,
        /// Per code: for `OffsetOutOfRange`, the earliest stored offset.
        pub detail: Option<u64>,
    }
}

impl ErrorResponse {
    /// An error with a message and no detail.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
        }
    }
}

impl std::fmt::Display for ErrorResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(detail) = self.detail {
            write!(f, " (detail {detail})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ErrorResponse {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &code in RequestCode::ALL {
            assert!(seen.insert(code.as_u16()));
            assert_eq!(RequestCode::from_u16(code.as_u16()), Some(code));
        }
        assert_eq!(RequestCode::from_u16(0), None);
        assert_eq!(RequestCode::SendBatch.as_u16(), 1);
        assert_eq!(RequestCode::Fetch.as_u16(), 2);
        assert_eq!(RequestCode::GroupHeartbeat.as_u16(), 30);
    }

    #[test]
    fn unknown_code_is_a_typed_error() {
        assert_eq!(
            Request::decode(999, &[]),
            Err(HeaderError::UnknownCode(999))
        );
        assert_eq!(
            HeaderError::UnknownCode(999).error_code(),
            ErrorCode::UnknownRequestCode
        );
    }

    #[test]
    fn call_pairs_request_with_response() {
        let r = Response::Fetch(FetchResponse {
            queue_id: QueueId(1),
            next_offset: 5,
            min_offset: 0,
            max_offset: 9,
        });
        assert!(FetchRequest::response_of(r.clone()).is_some());
        assert!(SendBatchRequest::response_of(r).is_none());
        assert_eq!(<CreateTopicRequest as Call>::CODE, RequestCode::CreateTopic);
    }

    proptest! {
        #[test]
        fn every_request_round_trips(req: Request) {
            let mut buf = BytesMut::new();
            req.encode_header(&mut buf);
            prop_assert_eq!(Request::decode(req.code().as_u16(), &buf), Ok(req));
        }

        #[test]
        fn every_response_round_trips(resp: Response) {
            let mut buf = BytesMut::new();
            resp.encode_header(&mut buf);
            prop_assert_eq!(Response::decode(resp.code().as_u16(), &buf), Ok(resp));
        }

        #[test]
        fn truncated_headers_are_errors(req: Request, cut in any::<prop::sample::Index>()) {
            let mut buf = BytesMut::new();
            req.encode_header(&mut buf);
            if !buf.is_empty() {
                let at = cut.index(buf.len());
                prop_assert!(Request::decode(req.code().as_u16(), &buf[..at]).is_err());
            }
        }
    }
}
