//! Appending to a direct-I/O file in whole blocks, one write at a time
//! (index files, the queue table; the commit log lays its chunks out as
//! blocks itself, see `flusher`).
//!
//! `O_DIRECT` writes start and end on block boundaries, but appends do not.
//! The writer keeps the bytes of the partial last block in memory and puts
//! them, followed by the new bytes and zero padding, at the front of the
//! next write. The zeros past the logical end are what recovery sees as "no
//! more data".

use super::disk::{align_down, align_up, DiskError, DiskFile, BLOCK_BYTES};
use std::rc::Rc;

/// The bytes of the block holding `pos`, from the block's start to `pos`,
/// read back from `file` (none when `pos` is block-aligned).
pub(crate) async fn partial_block<F: DiskFile>(file: &F, pos: u64) -> Result<Vec<u8>, DiskError> {
    let block_start = align_down(pos);
    let len = (pos - block_start) as usize;
    let mut block = Vec::with_capacity(BLOCK_BYTES as usize);
    if len > 0 {
        block.extend_from_slice(&file.read_at(block_start, len).await?);
        // A file shorter than its logical length reads as zeros past its end.
        block.resize(len, 0);
    }
    Ok(block)
}

/// Appends to one file, one write at a time.
#[derive(Debug)]
pub(crate) struct AlignedWriter<F> {
    file: Rc<F>,
    /// Logical bytes written.
    written: u64,
    /// Bytes of the block holding `written`, from its start to `written`.
    tail: Vec<u8>,
}

impl<F: DiskFile> AlignedWriter<F> {
    /// A writer for a file whose logical length is `written`, reading the
    /// partial last block back from disk.
    pub(crate) async fn open(file: Rc<F>, written: u64) -> Result<Self, DiskError> {
        let tail = partial_block(file.as_ref(), written).await?;
        Ok(Self {
            file,
            written,
            tail,
        })
    }

    /// The file.
    pub(crate) fn file(&self) -> &Rc<F> {
        &self.file
    }

    /// Logical bytes written.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Appends `data` with one write covering the partial block and `data`.
    /// A failed write leaves the writer as it was, so a retry rewrites it.
    pub(crate) async fn append(&mut self, data: &[u8]) -> Result<(), DiskError> {
        if data.is_empty() {
            return Ok(());
        }
        let start = align_down(self.written);
        let end = self.written + data.len() as u64;
        let len = (align_up(end) - start) as usize;
        self.file
            .write_parts_at(start, &[&self.tail, data], len)
            .await?;
        // The bytes of the new partial block, from the old tail and `data`.
        let new_block = align_down(end);
        let mut tail = Vec::with_capacity(BLOCK_BYTES as usize);
        if new_block < self.written {
            tail.extend_from_slice(&self.tail[(new_block - start) as usize..]);
            tail.extend_from_slice(data);
        } else {
            tail.extend_from_slice(&data[(new_block - self.written) as usize..]);
        }
        self.tail = tail;
        self.written = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::disk::{Disk, MemDisk};
    use std::path::Path;

    /// Appends many pieces, and checks the file against the bytes appended:
    /// zero-padded to a block, and continued seamlessly after a reopen.
    #[test]
    fn appends_rebuild_the_appended_bytes() {
        futures::FutureExt::now_or_never(async {
            let disk = MemDisk::new();
            disk.create_dir_all(Path::new("/d")).await.unwrap();
            let path = Path::new("/d/f");
            let file = Rc::new(disk.open(path, true).await.unwrap());
            let mut w = AlignedWriter::open(file.clone(), 0).await.unwrap();
            let mut expect = Vec::new();
            for i in 0..60u32 {
                let chunk = vec![i as u8 + 1; (i as usize * 37) % 5000 + 1];
                expect.extend_from_slice(&chunk);
                w.append(&chunk).await.unwrap();
                let got = disk.contents(path).unwrap();
                assert_eq!(got.len() as u64 % BLOCK_BYTES, 0);
                assert_eq!(&got[..expect.len()], &expect[..]);
                assert!(got[expect.len()..].iter().all(|&b| b == 0));
            }
            // Reopening at the logical end continues seamlessly.
            let mut w2 = AlignedWriter::open(file.clone(), w.written())
                .await
                .unwrap();
            w2.append(b"tail").await.unwrap();
            expect.extend_from_slice(b"tail");
            assert_eq!(&disk.contents(path).unwrap()[..expect.len()], &expect[..]);
        })
        .expect("the memory disk never waits");
    }

    /// A failed write leaves the writer where it was; the retry rewrites it.
    #[test]
    fn a_failed_append_is_retried_in_place() {
        futures::FutureExt::now_or_never(async {
            let disk = MemDisk::new();
            disk.create_dir_all(Path::new("/d")).await.unwrap();
            let path = Path::new("/d/f");
            let file = Rc::new(disk.open(path, true).await.unwrap());
            let mut w = AlignedWriter::open(file, 0).await.unwrap();
            w.append(&[1; 100]).await.unwrap();
            disk.fail(crate::store::disk::DiskOp::Write, 0, libc::EIO);
            assert!(w.append(&[2; 5000]).await.is_err());
            assert_eq!(w.written(), 100);
            w.append(&[3; 5000]).await.unwrap();
            let got = disk.contents(path).unwrap();
            assert_eq!(&got[..100], &[1; 100][..]);
            assert_eq!(&got[100..5100], &[3; 5000][..]);
        })
        .expect("the memory disk never waits");
    }
}
