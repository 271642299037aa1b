//! Topic metadata: each topic's queue count, permissions and the shard of
//! every queue. Shard 0 is the only writer; it persists the table in
//! `DATA_DIR/topics.json` (written to a temporary file, fsynced, renamed,
//! directory fsynced) and broadcasts every change to the other shards,
//! which keep a read-only copy.

use ringmq_core::route::{Perm, QueuePlacement, TopicDescription};
use ringmq_core::{QueueId, ShardId, TopicName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The metadata file in the broker's data folder.
pub(crate) const TOPICS_FILE: &str = "topics.json";

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TopicMeta {
    pub(crate) queue_count: u32,
    pub(crate) perm: u8,
    /// Shard of queue i.
    pub(crate) shards: Vec<u16>,
}

impl TopicMeta {
    /// The shard owning `queue`, if the topic has it.
    pub(crate) fn shard_of(&self, queue: QueueId) -> Option<usize> {
        self.shards.get(queue.0 as usize).map(|&s| s as usize)
    }

    pub(crate) fn describe(&self, topic: &TopicName) -> TopicDescription {
        TopicDescription {
            topic: topic.clone(),
            queue_count: self.queue_count,
            perm: Perm::from_bits(self.perm).unwrap_or(Perm::READ_WRITE),
            placement: self
                .shards
                .iter()
                .enumerate()
                .map(|(q, &s)| QueuePlacement {
                    queue_id: QueueId(q as u32),
                    shard_id: ShardId(s),
                })
                .collect(),
        }
    }
}

/// The persisted table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Topics {
    /// Bumped on every change.
    pub(crate) version: u64,
    pub(crate) topics: BTreeMap<String, TopicMeta>,
}

/// Why the table could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MetaError {
    #[error("topic table {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("topic table {} is damaged: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

impl Topics {
    /// Reads `dir/topics.json`; a missing file is an empty table.
    pub(crate) fn load(dir: &Path) -> Result<Self, MetaError> {
        let path = dir.join(TOPICS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let topics: Topics =
                    serde_json::from_slice(&bytes).map_err(|e| MetaError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                for (name, t) in &topics.topics {
                    if TopicName::new(name.clone()).is_err()
                        || t.shards.len() != t.queue_count as usize
                    {
                        return Err(MetaError::Corrupt {
                            path,
                            reason: format!("topic {name:?} is inconsistent"),
                        });
                    }
                }
                Ok(topics)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(MetaError::Io { path, source }),
        }
    }

    /// Writes the table atomically and durably. Blocking file I/O: it runs
    /// only on topic changes (rare, admin-driven) on shard 0.
    pub(crate) fn save(&self, dir: &Path) -> Result<(), MetaError> {
        let path = dir.join(TOPICS_FILE);
        let tmp = dir.join(format!("{TOPICS_FILE}.tmp"));
        let io = |source| MetaError::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec(self).map_err(|e| io(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_data().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }

    pub(crate) fn get(&self, topic: &TopicName) -> Option<&TopicMeta> {
        self.topics.get(topic.as_str())
    }
}

/// Places a new topic's queues: queue i on shard (start + i) mod n, with
/// `start` from the name, so one-queue topics spread over the shards.
pub(crate) fn place(topic: &TopicName, queue_count: u32, shards: usize) -> Vec<u16> {
    let start = crc32c::crc32c(topic.as_str().as_bytes()) as usize;
    (0..queue_count as usize)
        .map(|i| ((start + i) % shards) as u16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_spreads_and_is_stable() {
        let t = TopicName::new("orders").unwrap();
        let p = place(&t, 8, 2);
        assert_eq!(p, place(&t, 8, 2));
        assert_eq!(p.iter().filter(|&&s| s == 0).count(), 4);
        // One-queue topics start on a shard of their name's choosing, so
        // many of them use every shard (with a fixed start they would all
        // land on shard 0).
        let used: std::collections::BTreeSet<u16> = (0..32)
            .map(|i| place(&TopicName::new(format!("t{i}")).unwrap(), 1, 4)[0])
            .collect();
        assert_eq!(used.len(), 4, "{used:?}");
    }

    #[test]
    fn table_round_trips_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Topics::load(dir.path()).unwrap().topics.is_empty());
        let mut t = Topics {
            version: 3,
            ..Default::default()
        };
        t.topics.insert(
            "orders".into(),
            TopicMeta {
                queue_count: 2,
                perm: 6,
                shards: vec![0, 1],
            },
        );
        t.save(dir.path()).unwrap();
        let back = Topics::load(dir.path()).unwrap();
        assert_eq!(back.version, 3);
        assert_eq!(back.topics, t.topics);
        std::fs::write(dir.path().join(TOPICS_FILE), b"{not json").unwrap();
        assert!(matches!(
            Topics::load(dir.path()),
            Err(MetaError::Corrupt { .. })
        ));
    }
}
