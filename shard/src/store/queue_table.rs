//! The queue table: a shard-local number (qnum) for each (topic, queue id),
//! one fixed-size record per queue appended as queues are created, so
//! creating n queues writes O(n) bytes (rewriting a whole table each time
//! would be O(n²)). A record is durable before any log entry names its qnum.
//!
//! ```text
//! record (144 bytes, LE)
//!      0    4 qnum        = record index + 1
//!      4    4 queue_id
//!      8    2 topic_len   <= 127
//!     10  127 topic       UTF-8, zero-padded
//!    137    1 deleted     0, or 1: a tombstone deleting the live queue
//!                         (topic, queue_id); its own qnum is never used
//!    138    2 reserved    0
//!    140    4 crc         crc32c of bytes [0, 140)
//! ```
//!
//! A deleted queue keeps its qnum (its entries stay in the log until
//! retention removes them) but no longer has a name, so creating the same
//! (topic, queue id) again starts a new, empty queue.
//!
//! A zero record ends the table. A bad record followed only by zeros is a
//! torn append (its creation was never acknowledged) and is dropped; a bad
//! record followed by more data is damage and refuses the open.

use super::aligned::AlignedWriter;
use super::disk::{Disk, DiskFile};
use super::StoreError;
use ringmq_core::name::MAX_TOPIC_NAME_BYTES;
use ringmq_core::{QueueId, TopicName};
use std::path::{Path, PathBuf};
use std::rc::Rc;

pub(crate) const QUEUE_TABLE_FILE: &str = "queues.tbl";
const RECORD_BYTES: usize = 144;
const CRC_AT: usize = 140;
const TOPIC_AT: usize = 10;

/// One queue of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueRow {
    pub(crate) qnum: u32,
    pub(crate) topic: TopicName,
    pub(crate) queue_id: QueueId,
    pub(crate) deleted: bool,
}

const DELETED_AT: usize = 137;

impl QueueRow {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), StoreError> {
        let topic = self.topic.as_str().as_bytes();
        if topic.len() > MAX_TOPIC_NAME_BYTES {
            return Err(StoreError::Internal(format!(
                "topic {} too long for the queue table",
                self.topic
            )));
        }
        let mut r = [0u8; RECORD_BYTES];
        r[..4].copy_from_slice(&self.qnum.to_le_bytes());
        r[4..8].copy_from_slice(&self.queue_id.0.to_le_bytes());
        r[8..10].copy_from_slice(&(topic.len() as u16).to_le_bytes());
        r[TOPIC_AT..TOPIC_AT + topic.len()].copy_from_slice(topic);
        r[DELETED_AT] = u8::from(self.deleted);
        let crc = crc32c::crc32c(&r[..CRC_AT]);
        r[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&r);
        Ok(())
    }

    fn decode(r: &[u8]) -> Result<Self, &'static str> {
        let word = |at: usize| u32::from_le_bytes([r[at], r[at + 1], r[at + 2], r[at + 3]]);
        if r.len() != RECORD_BYTES || word(CRC_AT) != crc32c::crc32c(&r[..CRC_AT]) {
            return Err("crc mismatch");
        }
        if r[DELETED_AT] > 1 || r[DELETED_AT + 1..CRC_AT].iter().any(|&b| b != 0) {
            return Err("reserved bytes set");
        }
        let len = u16::from_le_bytes([r[8], r[9]]) as usize;
        let topic = r
            .get(TOPIC_AT..TOPIC_AT + len)
            .filter(|_| len <= MAX_TOPIC_NAME_BYTES)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| TopicName::new(s).ok())
            .ok_or("invalid topic name")?;
        Ok(Self {
            qnum: word(0),
            topic,
            queue_id: QueueId(word(4)),
            deleted: r[DELETED_AT] == 1,
        })
    }
}

/// The open table, appended to as queues are created.
#[derive(Debug)]
pub(crate) struct QueueTable<F> {
    /// `None` once the store closed.
    writer: Option<AlignedWriter<F>>,
    path: PathBuf,
}

impl<F: DiskFile> QueueTable<F> {
    /// Opens (or creates) `dir/queues.tbl` and reads every queue in it.
    pub(crate) async fn open<D: Disk<File = F>>(
        disk: &D,
        dir: &Path,
    ) -> Result<(Vec<QueueRow>, Self), StoreError> {
        let path = dir.join(QUEUE_TABLE_FILE);
        let file = disk.open(&path, true).await?;
        let bytes = file.read_at(0, file.size().await? as usize).await?;
        let rows = parse(&bytes).map_err(|reason| StoreError::CorruptMeta {
            path: path.clone(),
            reason,
        })?;
        let writer = AlignedWriter::open(Rc::new(file), (rows.len() * RECORD_BYTES) as u64).await?;
        Ok((
            rows,
            Self {
                writer: Some(writer),
                path,
            },
        ))
    }

    /// Appends `rows` (numbered on from the last) and makes them durable.
    pub(crate) async fn append(&mut self, rows: &[QueueRow]) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(rows.len() * RECORD_BYTES);
        for row in rows {
            row.encode(&mut buf)?;
        }
        let writer = self.writer.as_mut().ok_or(StoreError::Closed)?;
        writer.append(&buf).await?;
        writer.file().sync().await?;
        Ok(())
    }

    /// Gives up the file (to close it); later appends fail with `Closed`.
    pub(crate) fn release_file(&mut self) -> Option<Rc<F>> {
        self.writer.take().map(|w| w.file().clone())
    }

    /// The table's file, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

fn parse(bytes: &[u8]) -> Result<Vec<QueueRow>, String> {
    let mut rows = Vec::new();
    for (i, record) in bytes.chunks(RECORD_BYTES).enumerate() {
        if record.iter().all(|&b| b == 0) {
            break;
        }
        let expected = i as u32 + 1;
        match QueueRow::decode(record) {
            Ok(row) if row.qnum == expected => rows.push(row),
            bad => {
                let rest = &bytes[((i + 1) * RECORD_BYTES).min(bytes.len())..];
                let reason = bad.err().unwrap_or("queue number out of order");
                if rest.iter().all(|&b| b == 0) {
                    tracing::warn!(
                        record = i,
                        reason,
                        "dropping a torn last record of the queue table"
                    );
                    break;
                }
                return Err(format!("record {i}: {reason}, and records follow it"));
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::disk::MemDisk;
    use futures::FutureExt;

    fn row(qnum: u32, topic: &str, q: u32) -> QueueRow {
        QueueRow {
            qnum,
            topic: TopicName::new(topic).unwrap(),
            queue_id: QueueId(q),
            deleted: false,
        }
    }

    fn now<T>(f: impl std::future::Future<Output = T>) -> T {
        f.now_or_never().expect("the memory disk never waits")
    }

    #[test]
    fn appends_survive_reopen_and_torn_tails_are_dropped() {
        let disk = MemDisk::new();
        let dir = Path::new("/d");
        now(disk.create_dir_all(dir)).unwrap();
        let (rows, mut table) = now(QueueTable::open(&disk, dir)).unwrap();
        assert!(rows.is_empty());
        let long = "t".repeat(MAX_TOPIC_NAME_BYTES);
        let expect: Vec<QueueRow> = (1..=40)
            .map(|i| row(i, if i == 7 { &long } else { "orders" }, i))
            .collect();
        now(table.append(&expect[..30])).unwrap();
        now(table.append(&expect[30..])).unwrap();
        let (rows, _) = now(QueueTable::open(&disk, dir)).unwrap();
        assert_eq!(rows, expect);

        // A torn last record is dropped, and the next append replaces it.
        let path = dir.join(QUEUE_TABLE_FILE);
        now(table.append(&[row(41, "late", 0)])).unwrap();
        disk.corrupt(&path, (40 * RECORD_BYTES + 20) as u64, &[0xff]);
        let (rows, mut table) = now(QueueTable::open(&disk, dir)).unwrap();
        assert_eq!(rows, expect);
        now(table.append(&[row(41, "again", 1)])).unwrap();
        let (rows, _) = now(QueueTable::open(&disk, dir)).unwrap();
        assert_eq!(rows.last(), Some(&row(41, "again", 1)));
    }

    #[test]
    fn damage_before_the_end_refuses_the_open() {
        let disk = MemDisk::new();
        let dir = Path::new("/d");
        now(disk.create_dir_all(dir)).unwrap();
        let (_, mut table) = now(QueueTable::open(&disk, dir)).unwrap();
        now(table.append(&[row(1, "a", 0), row(2, "b", 0), row(3, "c", 0)])).unwrap();
        disk.corrupt(&dir.join(QUEUE_TABLE_FILE), 5, &[0xee]);
        let err = now(QueueTable::open(&disk, dir)).unwrap_err();
        assert!(matches!(err, StoreError::CorruptMeta { .. }), "{err}");
    }
}
