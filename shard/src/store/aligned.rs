//! Appending to a direct-I/O file in whole blocks.
//!
//! `O_DIRECT` writes start and end on block boundaries, but appends do not.
//! The stager keeps the bytes of the partial last block in memory and puts
//! them, followed by the new bytes (and zero padding when the write ends
//! mid-block), at the front of the next write. The zeros past the logical
//! end are what recovery sees as "no more data".
//!
//! Staging is separate from doing the write so that several writes can be
//! in flight at once. Two writes in flight must never touch the same block
//! (their order on the device is unspecified), so a caller that keeps
//! writes in flight asks the stager to hold back the partial last block:
//! the write ends on a block boundary and the held bytes lead the next one.
//! A write that does end mid-block is [`BlockWrite::partial`], and the next
//! write (which starts in that block) must wait for it.

use super::disk::{align_down, align_up, DiskError, DiskFile, BLOCK_BYTES};
use bytes::Bytes;
use std::rc::Rc;

/// One write to issue: `head` then `body` at `start`, zero-padded to `len`.
#[derive(Debug)]
pub(crate) struct BlockWrite {
    pub(crate) start: u64,
    pub(crate) head: Vec<u8>,
    pub(crate) body: Bytes,
    pub(crate) len: usize,
    /// Logical bytes of the file this write completes: everything before
    /// `end` is on disk once it (and every earlier write) has completed.
    pub(crate) end: u64,
    /// Whether the write ends mid-block (the next write rewrites that block).
    pub(crate) partial: bool,
}

impl BlockWrite {
    /// Issues the write.
    pub(crate) async fn run<F: DiskFile>(&self, file: &F) -> Result<(), DiskError> {
        file.write_parts_at(self.start, &[&self.head, &self.body], self.len)
            .await
    }
}

/// Stages block-aligned writes appending to one file.
#[derive(Debug)]
pub(crate) struct BlockStager<F> {
    file: Rc<F>,
    /// Logical bytes staged (written, in flight, or held in `tail`).
    staged: u64,
    /// Bytes of the block holding `staged`, from its start to `staged`.
    tail: Vec<u8>,
    /// Logical end of what has been handed out as writes.
    issued: u64,
}

impl<F: DiskFile> BlockStager<F> {
    /// A stager for a file whose logical length is `written`, reading the
    /// partial last block back from disk.
    pub(crate) async fn open(file: Rc<F>, written: u64) -> Result<Self, DiskError> {
        let block_start = align_down(written);
        let tail_len = (written - block_start) as usize;
        let mut tail = Vec::with_capacity(BLOCK_BYTES as usize);
        if tail_len > 0 {
            let block = file.read_at(block_start, tail_len).await?;
            tail.extend_from_slice(&block);
            // A file shorter than its logical length reads as zeros past its end.
            tail.resize(tail_len, 0);
        }
        Ok(Self {
            file,
            staged: written,
            tail,
            issued: written,
        })
    }

    /// The file.
    pub(crate) fn file(&self) -> &Rc<F> {
        &self.file
    }

    /// Logical bytes staged so far.
    pub(crate) fn staged(&self) -> u64 {
        self.staged
    }

    /// Whether staged bytes are held back, not yet part of any write.
    pub(crate) fn holds(&self) -> bool {
        self.issued < self.staged
    }

    /// Stages `data` after what is staged. With `hold_partial` the write
    /// stops at the last whole block and the rest waits for the next one
    /// (`None` if no whole block is complete yet); otherwise it covers
    /// everything staged, padded to a block.
    pub(crate) fn stage(&mut self, data: Bytes, hold_partial: bool) -> Option<BlockWrite> {
        let start = align_down(self.staged);
        let end = self.staged + data.len() as u64;
        let write_end = if hold_partial { align_down(end) } else { end };
        let new_block = align_down(end);
        // The bytes of the new partial block, from the old tail and `data`.
        let mut tail = Vec::with_capacity(BLOCK_BYTES as usize);
        if new_block < self.staged {
            tail.extend_from_slice(&self.tail[(new_block - start) as usize..]);
            tail.extend_from_slice(&data);
        } else {
            tail.extend_from_slice(&data[(new_block - self.staged) as usize..]);
        }
        let head = std::mem::replace(&mut self.tail, tail);
        self.staged = end;
        if write_end <= self.issued || write_end <= start {
            return None;
        }
        // `write_end >= start + head.len()`: either the write covers all of
        // `data` or it ends at `new_block`, which is past the old tail's block.
        let body_len = (write_end - start) as usize - head.len();
        self.issued = write_end;
        Some(BlockWrite {
            start,
            len: (align_up(write_end) - start) as usize,
            head,
            body: data.slice(..body_len),
            end: write_end,
            partial: write_end % BLOCK_BYTES != 0,
        })
    }

    /// A write of the held-back bytes (the partial last block), if any.
    pub(crate) fn flush_held(&mut self) -> Option<BlockWrite> {
        self.holds()
            .then(|| self.stage(Bytes::new(), false))
            .flatten()
    }
}

/// Appends to one file, one write at a time (index files, the queue table).
#[derive(Debug)]
pub(crate) struct AlignedWriter<F> {
    stager: BlockStager<F>,
}

impl<F: DiskFile> AlignedWriter<F> {
    /// A writer for a file whose logical length is `written`.
    pub(crate) async fn open(file: Rc<F>, written: u64) -> Result<Self, DiskError> {
        Ok(Self {
            stager: BlockStager::open(file, written).await?,
        })
    }

    /// The file.
    pub(crate) fn file(&self) -> &Rc<F> {
        self.stager.file()
    }

    /// Logical bytes written.
    pub(crate) fn written(&self) -> u64 {
        self.stager.staged()
    }

    /// Appends `data` with one write covering the partial block and `data`.
    /// A failed write leaves the writer as it was, so a retry rewrites it.
    pub(crate) async fn append(&mut self, data: &[u8]) -> Result<(), DiskError> {
        let before = (
            self.stager.staged,
            self.stager.tail.clone(),
            self.stager.issued,
        );
        let Some(write) = self.stager.stage(Bytes::copy_from_slice(data), false) else {
            return Ok(());
        };
        let result = write.run(self.stager.file().as_ref()).await;
        if result.is_err() {
            (self.stager.staged, self.stager.tail, self.stager.issued) = before;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::disk::{Disk, MemDisk};
    use std::path::Path;

    /// Stages many appends (holding partial blocks on every third), writes
    /// them in order, and checks the file against the bytes appended.
    #[test]
    fn staged_writes_rebuild_the_appended_bytes() {
        futures::FutureExt::now_or_never(async {
            let disk = MemDisk::new();
            disk.create_dir_all(Path::new("/d")).await.unwrap();
            let path = Path::new("/d/f");
            let file = Rc::new(disk.open(path, true).await.unwrap());
            let mut w = BlockStager::open(file.clone(), 0).await.unwrap();
            let mut expect = Vec::new();
            for i in 0..60u32 {
                let chunk = vec![i as u8 + 1; (i as usize * 37) % 5000 + 1];
                expect.extend_from_slice(&chunk);
                if let Some(write) = w.stage(Bytes::from(chunk), i % 3 != 0) {
                    assert_eq!(write.start % BLOCK_BYTES, 0);
                    assert_eq!(write.len as u64 % BLOCK_BYTES, 0);
                    assert_eq!(write.partial, write.end % BLOCK_BYTES != 0);
                    write.run(file.as_ref()).await.unwrap();
                }
            }
            if let Some(write) = w.flush_held() {
                write.run(file.as_ref()).await.unwrap();
            }
            assert!(!w.holds());
            let got = disk.contents(path).unwrap();
            assert_eq!(&got[..expect.len()], &expect[..]);
            assert!(got[expect.len()..].iter().all(|&b| b == 0));
            assert_eq!(got.len() as u64 % BLOCK_BYTES, 0);
            // Reopening at the logical end continues seamlessly.
            let mut w2 = BlockStager::open(file.clone(), w.staged()).await.unwrap();
            let write = w2.stage(Bytes::from_static(b"tail"), false).unwrap();
            write.run(file.as_ref()).await.unwrap();
            expect.extend_from_slice(b"tail");
            assert_eq!(&disk.contents(path).unwrap()[..expect.len()], &expect[..]);
        })
        .expect("the memory disk never waits");
    }

    #[test]
    fn holding_writes_only_whole_blocks() {
        futures::FutureExt::now_or_never(async {
            let disk = MemDisk::new();
            disk.create_dir_all(Path::new("/d")).await.unwrap();
            let file = Rc::new(disk.open(Path::new("/d/f"), true).await.unwrap());
            let mut w = BlockStager::open(file, 0).await.unwrap();
            assert!(w.stage(Bytes::from(vec![1; 100]), true).is_none());
            assert!(w.holds());
            let write = w.stage(Bytes::from(vec![2; 5000]), true).unwrap();
            assert_eq!((write.start, write.end, write.len), (0, 4096, 4096));
            assert!(!write.partial);
            assert_eq!(write.head.len() + write.body.len(), 4096);
            let held = w.flush_held().unwrap();
            assert_eq!((held.start, held.end, held.len), (4096, 5100, 4096));
            assert!(held.partial);
            assert!(w.flush_held().is_none());
        })
        .expect("the memory disk never waits");
    }
}
