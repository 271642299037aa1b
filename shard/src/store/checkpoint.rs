//! Small metadata files written atomically (write a temporary file, fsync,
//! rename over the old one, fsync the folder): the checkpoint and the
//! generation.
//!
//! ```text
//! offset size field
//!      0    8 magic        b"RMQMETA1"
//!      8    8 payload_len  u64 LE
//!     16    4 crc          crc32c of the payload
//!     20    4 reserved     0
//!     24    . payload      JSON (small, and readable by an operator)
//!           . zero padding to a whole block
//! ```

use super::disk::{align_up, Disk, DiskFile};
use super::StoreError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const META_MAGIC: &[u8; 8] = b"RMQMETA1";
const META_HEADER_BYTES: usize = 24;

/// Where the log was consistent with the indexes, and each queue's state there.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    /// Every log entry before this position has its index entries on disk
    /// and synced; recovery scans the log from here.
    pub(crate) log_position: u64,
    /// Written by a clean shutdown: nothing after `log_position`.
    pub(crate) clean: bool,
    /// Per queue (by number): offsets at `log_position`.
    pub(crate) queues: Vec<QueueCheckpoint>,
    /// Committed consumer offsets: (group, queue number, offset).
    pub(crate) consumer_offsets: Vec<(String, u32, u64)>,
    /// Newest store time per segment (start position, ms), for retention.
    #[serde(default)]
    pub(crate) segment_max_ts: Vec<(u64, i64)>,
    /// The newest generation among entries before `log_position`.
    #[serde(default)]
    pub(crate) log_generation: u32,
}

/// The last store run's generation (see commit_log.rs); bumped durably at
/// every open before anything is appended.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Generation {
    pub(crate) generation: u32,
    /// Log position where that run's appends began. Everything from here on
    /// was written by that run, so an entry of an older generation at or
    /// past it is a leftover (or a torn mix of old and new blocks that
    /// happens to verify), never part of the log. `None` in files written
    /// before it was recorded.
    #[serde(default)]
    pub(crate) start_position: Option<u64>,
}

pub(crate) const GENERATION_FILE: &str = "generation";

/// A queue's offsets at a checkpoint.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct QueueCheckpoint {
    pub(crate) qnum: u32,
    pub(crate) next_offset: u64,
    pub(crate) min_offset: u64,
}

pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";

/// Writes `value` to `dir/name` atomically and durably.
pub(crate) async fn write_meta<D: Disk, T: Serialize>(
    disk: &D,
    dir: &Path,
    name: &str,
    value: &T,
) -> Result<(), StoreError> {
    let payload = serde_json::to_vec(value)
        .map_err(|e| StoreError::Internal(format!("encode {name}: {e}")))?;
    let mut buf = Vec::with_capacity(align_up((META_HEADER_BYTES + payload.len()) as u64) as usize);
    buf.extend_from_slice(META_MAGIC);
    buf.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    buf.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&payload);
    buf.resize(align_up(buf.len() as u64) as usize, 0);
    let tmp: PathBuf = dir.join(format!("{name}.tmp"));
    let file = disk.open(&tmp, true).await?;
    file.write_at(0, &buf).await?;
    file.sync().await?;
    drop(file);
    disk.rename(&tmp, &dir.join(name)).await?;
    disk.sync_dir(dir).await?;
    Ok(())
}

/// Reads `dir/name`: `Ok(None)` if it does not exist, an error if it is damaged.
pub(crate) async fn read_meta<D: Disk, T: for<'de> Deserialize<'de>>(
    disk: &D,
    dir: &Path,
    name: &str,
) -> Result<Option<T>, StoreError> {
    let path = dir.join(name);
    if !disk.list(dir).await?.iter().any(|n| n == name) {
        return Ok(None);
    }
    let file = disk.open(&path, false).await?;
    let len = file.size().await?;
    let bytes = file.read_at(0, len as usize).await?;
    let corrupt = |reason: &str| StoreError::CorruptMeta {
        path: path.clone(),
        reason: reason.to_owned(),
    };
    if bytes.len() < META_HEADER_BYTES || &bytes[..8] != META_MAGIC {
        return Err(corrupt("bad magic or truncated header"));
    }
    let payload_len = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(bytes[16..20].try_into().unwrap_or_default());
    let payload = bytes
        .get(META_HEADER_BYTES..META_HEADER_BYTES.saturating_add(payload_len))
        .ok_or_else(|| corrupt("payload runs past the file"))?;
    if crc32c::crc32c(payload) != crc {
        return Err(corrupt("crc mismatch"));
    }
    serde_json::from_slice(payload)
        .map(Some)
        .map_err(|e| corrupt(&e.to_string()))
}
