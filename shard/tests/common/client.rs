//! A small blocking client for broker tests: real TCP, core's codec.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // test-only helpers

use bytes::{Bytes, BytesMut};
use ringmq_core::messages::*;
use ringmq_core::route::{Perm, TopicDescription};
use ringmq_core::{
    BatchBuilder, ErrorResponse, Frame, FrameDecoder, QueueId, RecordInput, Request, Response,
    TopicName,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    next: u32,
}

pub type Answer = Result<(Response, Bytes), ErrorResponse>;

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: BytesMut::new(),
            next: 1,
        }
    }

    /// Sends a request without waiting; returns its opaque id.
    pub fn send(&mut self, req: Request, body: Bytes) -> u32 {
        let opaque = self.next;
        self.next += 1;
        let mut out = BytesMut::new();
        Frame::request(opaque, &req, body).encode(&mut out).unwrap();
        self.stream.write_all(&out).unwrap();
        opaque
    }

    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next answer: (opaque, answer), or `None` when the broker closed.
    pub fn recv(&mut self) -> Option<(u32, Answer)> {
        let decoder = FrameDecoder::default();
        loop {
            if let Some(frame) = decoder.decode(&mut self.buf).unwrap() {
                let answer = frame
                    .decode_response()
                    .unwrap()
                    .map(|r| (r, frame.body.clone()));
                return Some((frame.opaque, answer));
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn call(&mut self, req: impl Into<Request>, body: Bytes) -> Answer {
        let opaque = self.send(req.into(), body);
        let (got, answer) = self.recv().expect("broker answered");
        assert_eq!(got, opaque, "answers to one request at a time");
        answer
    }

    pub fn create_topic(&mut self, topic: &str, queues: u32) -> TopicDescription {
        match self.call(
            CreateTopicRequest {
                topic: TopicName::new(topic).unwrap(),
                queue_count: queues,
                perm: Perm::READ_WRITE,
            },
            Bytes::new(),
        ) {
            Ok((Response::CreateTopic(d), _)) => d,
            other => panic!("create topic: {other:?}"),
        }
    }

    pub fn produce(&mut self, topic: &str, queue: u32, bodies: &[Vec<u8>]) -> Answer {
        self.call(
            SendBatchRequest {
                topic: TopicName::new(topic).unwrap(),
                queue_id: QueueId(queue),
            },
            batch(queue, bodies),
        )
    }

    /// Every record body of a queue from `from`, fetching until the end.
    pub fn read_queue(&mut self, topic: &str, queue: u32, from: u64) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut offset = from;
        loop {
            let (resp, body) = self
                .call(fetch(topic, queue, offset, 0), Bytes::new())
                .unwrap();
            let Response::Fetch(f) = resp else {
                panic!("fetch answered {resp:?}")
            };
            for (o, b) in records(body) {
                if o >= offset {
                    out.push((o, b));
                }
            }
            if f.next_offset == offset {
                return out;
            }
            offset = f.next_offset;
        }
    }

    pub fn status(&mut self) -> BrokerStatusResponse {
        match self.call(BrokerStatusRequest {}, Bytes::new()) {
            Ok((Response::BrokerStatus(s), _)) => s,
            other => panic!("status: {other:?}"),
        }
    }
}

pub fn fetch(topic: &str, queue: u32, offset: u64, max_wait_ms: u32) -> FetchRequest {
    FetchRequest {
        topic: TopicName::new(topic).unwrap(),
        queue_id: QueueId(queue),
        offset,
        max_bytes: 1 << 20,
        max_wait_ms,
    }
}

pub fn batch(queue: u32, bodies: &[Vec<u8>]) -> Bytes {
    let mut b = BatchBuilder::new(QueueId(queue));
    for body in bodies {
        b.push(&RecordInput {
            timestamp_ms: 1_700_000_000_000,
            body,
            ..Default::default()
        })
        .unwrap();
    }
    b.finish().unwrap()
}

/// (offset, body) of every record in a fetch body.
pub fn records(body: Bytes) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for batch in ringmq_core::Batches::new(body) {
        let batch = batch.unwrap();
        for r in batch.records() {
            let r = r.unwrap();
            out.push((r.offset, r.body.to_vec()));
        }
    }
    out
}
