//! The store's only way to the disk: a small trait with a real direct-I/O
//! implementation ([`DmaDisk`], glommio `DmaFile`) and a test one
//! ([`MemDisk`]) that can fail any operation, run out of space, tear the last
//! write and forget every unsynced byte, so crash behaviour is testable
//! without pulling the power.
//!
//! Writes go at block-aligned positions in whole blocks ([`BLOCK_BYTES`]),
//! as `O_DIRECT` requires; callers keep the partial last block in memory and
//! rewrite it (see `aligned.rs`).

use bytes::Bytes;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Direct-I/O block size: 4 KiB is the largest logical block size in common
/// use, so aligning to it satisfies every device.
pub const BLOCK_BYTES: u64 = 4096;

/// Rounds down to a block boundary.
pub fn align_down(v: u64) -> u64 {
    v & !(BLOCK_BYTES - 1)
}

/// Rounds up to a block boundary.
pub fn align_up(v: u64) -> u64 {
    align_down(v + BLOCK_BYTES - 1)
}

/// An I/O error with the operation and file it came from.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct DiskError {
    /// What was being done ("write", "fdatasync", ...).
    pub op: &'static str,
    /// The file or folder.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl DiskError {
    fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// Whether [`Disk::lock_dir`] failed because another store holds the folder.
    pub fn is_in_use(&self) -> bool {
        self.op == "lock" && self.source.kind() == io::ErrorKind::WouldBlock
    }

    fn in_use(path: &Path, holder: &str) -> Self {
        let why = match holder.trim() {
            "" => "held by another store".to_owned(),
            pid => format!("held by process {pid}"),
        };
        Self::new("lock", path, io::Error::new(io::ErrorKind::WouldBlock, why))
    }

    /// Whether the device is out of space (ENOSPC or EDQUOT). glommio
    /// hands these over as custom errors that keep only the kind, so the
    /// kind counts as much as the raw OS error.
    pub fn is_no_space(&self) -> bool {
        matches!(
            self.source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        ) || matches!(
            self.source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
    }
}

/// A filesystem the store can use. One per shard; not `Send`, like the shard.
#[allow(async_fn_in_trait)]
pub trait Disk: Clone + 'static {
    /// An open file.
    type File: DiskFile;
    /// What [`Disk::lock_dir`] returns: the folder stays this holder's
    /// until it is dropped (or its process dies).
    type DirLock: 'static;
    /// Opens `path` for reading and writing, creating it if `create`.
    async fn open(&self, path: &Path, create: bool) -> Result<Self::File, DiskError>;
    /// Opens the existing file `path` for reading and writing,
    /// write-through (`O_DSYNC`): each write is durable when it completes,
    /// as if an fdatasync had followed it, so none need follow. Covers that
    /// write's bytes only. Files are made (and prepared) with [`Disk::open`].
    async fn open_write_through(&self, path: &Path) -> Result<Self::File, DiskError>;
    /// Deletes a file.
    async fn remove(&self, path: &Path) -> Result<(), DiskError>;
    /// Renames a file, replacing `to` (atomic on POSIX filesystems).
    async fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError>;
    /// Creates a folder and its parents.
    async fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError>;
    /// Names of the files in a folder, sorted.
    async fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError>;
    /// Makes creations, removals and renames in `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> Result<(), DiskError>;
    /// Takes the store folder `dir` (which exists) for one store alone: a
    /// second store on it, in this process or another, would interleave
    /// its writes with the first's. Fails with an error for which
    /// [`DiskError::is_in_use`] holds while another holds it.
    async fn lock_dir(&self, dir: &Path) -> Result<Self::DirLock, DiskError>;
}

/// The lock file in a store folder ([`Disk::lock_dir`]); it holds the id
/// of the process that took the folder, for messages.
pub const LOCK_FILE: &str = "LOCK";

/// An open file.
#[allow(async_fn_in_trait)]
pub trait DiskFile: 'static {
    /// Writes `data` at `pos`; both are multiples of [`BLOCK_BYTES`].
    async fn write_at(&self, pos: u64, data: &[u8]) -> Result<(), DiskError> {
        self.write_parts_at(pos, &[data], data.len()).await
    }
    /// Writes the concatenation of `parts`, zero-padded to `len` bytes, at
    /// `pos` (`pos` and `len` multiples of [`BLOCK_BYTES`]): one copy into
    /// the device buffer, no staging buffer.
    async fn write_parts_at(&self, pos: u64, parts: &[&[u8]], len: usize) -> Result<(), DiskError>;
    /// Writes `data` at `pos`. `pos` and `data.len()` are multiples of
    /// [`BLOCK_BYTES`]; where `data` also starts at a block-aligned address
    /// a direct-I/O file writes it as it is, with no copy.
    async fn write_aligned(&self, pos: u64, data: Bytes) -> Result<(), DiskError> {
        self.write_parts_at(pos, &[&data], data.len()).await
    }
    /// Reads up to `len` bytes at `pos`; fewer only at the end of the file.
    async fn read_at(&self, pos: u64, len: usize) -> Result<Bytes, DiskError>;
    /// fdatasync: every completed write becomes durable.
    async fn sync(&self) -> Result<(), DiskError>;
    /// Reserves space so the file is `len` bytes (fallocate); reads of the
    /// new range return zeros.
    async fn allocate(&self, len: u64) -> Result<(), DiskError>;
    /// The file's size in bytes.
    async fn size(&self) -> Result<u64, DiskError>;
    /// The file's path, for messages.
    fn path(&self) -> &Path;
    /// Closes the file now. A file merely dropped may keep its descriptor
    /// (and a deleted file its blocks) until its runtime's next I/O cycle,
    /// which never comes once the runtime has stopped.
    async fn close(self) -> Result<(), DiskError>
    where
        Self: Sized,
    {
        Ok(())
    }
}

/// Closes each file that nobody else holds; the rest close when their
/// last holder (a read in flight) drops them.
pub(crate) async fn close_files<F: DiskFile>(files: Vec<Rc<F>>) {
    for file in files {
        if let Ok(file) = Rc::try_unwrap(file) {
            let path = file.path().to_owned();
            if let Err(e) = file.close().await {
                tracing::warn!(path = %path.display(), error = %e, "closing a file failed");
            }
        }
    }
}

/// The real disk: glommio `DmaFile`s (O_DIRECT through io_uring) on the
/// shard's executor. Removal, rename and folder fsync go through glommio
/// too; folder creation and listing (start-up only) use the std calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct DmaDisk;

/// A [`DmaDisk`] file.
#[derive(Debug)]
pub struct DmaDiskFile {
    file: glommio::io::DmaFile,
    path: PathBuf,
}

fn glommio_err(op: &'static str, path: &Path, e: glommio::GlommioError<()>) -> DiskError {
    DiskError::new(op, path, io::Error::from(e))
}

thread_local! {
    /// Devices (st_dev) whose io_uring poll support glommio has probed on this thread.
    static PROBED_DEVICES: RefCell<BTreeSet<u64>> = const { RefCell::new(BTreeSet::new()) };
}

/// glommio decides once per device whether reads may use the io_uring poll
/// ring, by reading the first DMA file opened there. On an empty file that
/// read "succeeds" (EOF) even where polling is unsupported, and every later
/// read then fails with EOPNOTSUPP. So before the first open on a device we
/// open a one-block file of real data, and glommio's probe gets a true answer.
async fn prime_iopoll_probe(dir: &Path) -> Result<(), DiskError> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir)
        .map_err(|e| DiskError::new("stat", dir, e))?
        .dev();
    if PROBED_DEVICES.with(|p| p.borrow().contains(&dev)) {
        return Ok(());
    }
    let probe = dir.join(".ringmq-iopoll-probe");
    std::fs::write(&probe, vec![0xa5u8; BLOCK_BYTES as usize])
        .map_err(|e| DiskError::new("write", &probe, e))?;
    let opened = glommio::io::DmaFile::open(&probe).await;
    let _ = std::fs::remove_file(&probe);
    let file = opened.map_err(|e| glommio_err("open", &probe, e))?;
    let _ = file.close().await;
    PROBED_DEVICES.with(|p| p.borrow_mut().insert(dev));
    Ok(())
}

impl Disk for DmaDisk {
    type File = DmaDiskFile;
    type DirLock = DmaDirLock;

    async fn open(&self, path: &Path, create: bool) -> Result<DmaDiskFile, DiskError> {
        DmaDiskFile::open(path, create, 0).await
    }

    async fn open_write_through(&self, path: &Path) -> Result<DmaDiskFile, DiskError> {
        DmaDiskFile::open(path, false, libc::O_DSYNC).await
    }

    async fn remove(&self, path: &Path) -> Result<(), DiskError> {
        // Unlinking a large segment can take tens of milliseconds on ext4;
        // glommio does it off the shard's thread, so appends never stall on it.
        glommio::io::remove(path)
            .await
            .map_err(|e| glommio_err("remove", path, e))
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError> {
        glommio::io::rename(from, to)
            .await
            .map_err(|e| glommio_err("rename", from, e))
    }

    async fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        std::fs::create_dir_all(dir).map_err(|e| DiskError::new("create folder", dir, e))
    }

    async fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        let entries = std::fs::read_dir(dir).map_err(|e| DiskError::new("list", dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| DiskError::new("list", dir, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    async fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        let d = glommio::io::Directory::open(dir)
            .await
            .map_err(|e| glommio_err("open folder", dir, e))?;
        d.sync()
            .await
            .map_err(|e| glommio_err("fsync folder", dir, e))?;
        d.close()
            .await
            .map_err(|e| glommio_err("close folder", dir, e))
    }

    /// [`lock_file`] on `dir/LOCK`. Plain blocking calls: once per open.
    async fn lock_dir(&self, dir: &Path) -> Result<DmaDirLock, DiskError> {
        lock_file(&dir.join(LOCK_FILE)).map(|file| DmaDirLock { _file: file })
    }
}

/// Takes an exclusive `flock` on `path` (created if missing) without
/// waiting, and writes this process's id into it for the message a second
/// taker gets ([`DiskError::is_in_use`], "held by process N"). The kernel
/// drops the lock with the descriptor, so a process killed by SIGKILL
/// leaves nothing to clean up. Blocking calls.
pub fn lock_file(path: &Path) -> Result<std::fs::File, DiskError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| DiskError::new("open", path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            return Err(DiskError::in_use(path, &holder));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(DiskError::new("lock", path, e)),
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(|e| DiskError::new("write", path, e))?;
    Ok(file)
}

/// A store folder taken by [`DmaDisk::lock_dir`]; dropping it closes the
/// descriptor, which releases the lock.
#[derive(Debug)]
pub struct DmaDirLock {
    _file: std::fs::File,
}

/// Copies `parts` into `dst` and zeroes the rest.
fn fill(dst: &mut [u8], parts: &[&[u8]]) {
    let mut at = 0;
    for part in parts {
        dst[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    dst[at..].fill(0);
}

impl DmaDiskFile {
    /// Opens `path` for direct I/O with extra `open(2)` `flags`.
    async fn open(path: &Path, create: bool, flags: i32) -> Result<Self, DiskError> {
        prime_iopoll_probe(path.parent().unwrap_or(Path::new("."))).await?;
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .custom_flags(flags)
            .dma_open(path)
            .await
            .map_err(|e| glommio_err("open", path, e))?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// A write's result: an error unless all `len` bytes were written.
    fn whole_write(
        &self,
        written: glommio::Result<usize, ()>,
        len: usize,
    ) -> Result<(), DiskError> {
        let written = written.map_err(|e| glommio_err("write", &self.path, e))?;
        if written != len {
            let e = io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {written} of {len}"),
            );
            return Err(DiskError::new("write", &self.path, e));
        }
        Ok(())
    }
}

impl DiskFile for DmaDiskFile {
    async fn write_parts_at(&self, pos: u64, parts: &[&[u8]], len: usize) -> Result<(), DiskError> {
        let data_len: usize = parts.iter().map(|p| p.len()).sum();
        if data_len > len {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "parts exceed the write length");
            return Err(DiskError::new("write", &self.path, e));
        }
        let mut buf = self.file.alloc_dma_buffer(len);
        fill(buf.as_bytes_mut(), parts);
        let written = self.file.write_at(buf, pos).await;
        self.whole_write(written, len)
    }

    async fn write_aligned(&self, pos: u64, data: Bytes) -> Result<(), DiskError> {
        if !(data.as_ptr() as usize).is_multiple_of(BLOCK_BYTES as usize) {
            // Not addressable by the device as it is: copy it.
            return self.write_parts_at(pos, &[&data], data.len()).await;
        }
        let len = data.len();
        // Into the kernel at once: the flusher copies the round for the
        // tail cache while the device works (see `Flusher::stage`).
        let written = self.file.write_owned_at_now(data, pos).await;
        self.whole_write(written, len)
    }

    async fn read_at(&self, pos: u64, len: usize) -> Result<Bytes, DiskError> {
        let read = self
            .file
            .read_at(pos, len)
            .await
            .map_err(|e| glommio_err("read", &self.path, e))?;
        Ok(Bytes::copy_from_slice(&read))
    }

    async fn sync(&self) -> Result<(), DiskError> {
        self.file
            .fdatasync()
            .await
            .map_err(|e| glommio_err("fdatasync", &self.path, e))
    }

    async fn allocate(&self, len: u64) -> Result<(), DiskError> {
        self.file
            .pre_allocate(len, false)
            .await
            .map_err(|e| glommio_err("fallocate", &self.path, e))
    }

    async fn size(&self) -> Result<u64, DiskError> {
        self.file
            .file_size()
            .await
            .map_err(|e| glommio_err("stat", &self.path, e))
    }

    fn path(&self) -> &Path {
        &self.path
    }

    async fn close(self) -> Result<(), DiskError> {
        let path = self.path;
        self.file
            .close()
            .await
            .map_err(|e| glommio_err("close", &path, e))
    }
}

/// Operations a [`MemDisk`] fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskOp {
    /// `open`.
    Open,
    /// `write_at`.
    Write,
    /// `read_at`.
    Read,
    /// `sync`.
    Sync,
    /// `allocate`.
    Allocate,
    /// `remove`.
    Remove,
    /// `rename`.
    Rename,
}

#[derive(Debug, Clone)]
struct Fault {
    op: DiskOp,
    skip: u64,
    errno: i32,
}

#[derive(Debug, Default)]
struct MemFile {
    /// What reads see.
    data: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct MemFs {
    files: BTreeMap<PathBuf, Rc<RefCell<MemFile>>>,
    dirs: BTreeSet<PathBuf>,
    faults: Vec<Fault>,
    /// Operations attempted so far, failed ones included.
    counts: HashMap<DiskOp, u64>,
    capacity_bytes: Option<u64>,
    /// The last write not yet covered by a sync: (file, position, bytes).
    last_write: Option<(Rc<RefCell<MemFile>>, u64, Vec<u8>)>,
    /// With `Some(state)`, each write first yields a pseudo-random 0-3
    /// times, so writes in flight together complete out of order.
    write_jitter: Option<u64>,
    /// Folders taken by [`Disk::lock_dir`], each with its holder's token.
    locked: HashMap<PathBuf, u64>,
    lock_tokens: u64,
}

impl MemFs {
    fn check(&mut self, op: DiskOp, path: &Path) -> Result<(), DiskError> {
        *self.counts.entry(op).or_default() += 1;
        let hit = self.faults.iter().position(|f| f.op == op);
        if let Some(i) = hit {
            if self.faults[i].skip == 0 {
                let fault = self.faults.remove(i);
                let op_name = match op {
                    DiskOp::Open => "open",
                    DiskOp::Write => "write",
                    DiskOp::Read => "read",
                    DiskOp::Sync => "fdatasync",
                    DiskOp::Allocate => "fallocate",
                    DiskOp::Remove => "remove",
                    DiskOp::Rename => "rename",
                };
                return Err(DiskError::new(
                    op_name,
                    path,
                    io::Error::from_raw_os_error(fault.errno),
                ));
            }
            self.faults[i].skip -= 1;
        }
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        self.files
            .values()
            .map(|f| f.borrow().data.len() as u64)
            .sum()
    }

    fn ensure_room(&self, growth: u64, op: &'static str, path: &Path) -> Result<(), DiskError> {
        match self.capacity_bytes {
            Some(cap) if self.used_bytes() + growth > cap => Err(DiskError::new(
                op,
                path,
                io::Error::from_raw_os_error(libc::ENOSPC),
            )),
            _ => Ok(()),
        }
    }
}

/// An in-memory disk for tests: faults on demand, a capacity, and crashes
/// that keep only synced bytes and completed writes of write-through files
/// (optionally plus a torn prefix of the last other write). Folder operations are durable at once.
#[derive(Debug, Clone, Default)]
pub struct MemDisk {
    fs: Rc<RefCell<MemFs>>,
}

/// A [`MemDisk`] file.
#[derive(Debug)]
pub struct MemDiskFile {
    fs: Rc<RefCell<MemFs>>,
    file: Rc<RefCell<MemFile>>,
    path: PathBuf,
    /// Opened write-through: each write is durable once it completes.
    write_through: bool,
}

impl MemDisk {
    /// An empty disk with no capacity limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the `skip + 1`-th next `op` fail with `errno` (once).
    pub fn fail(&self, op: DiskOp, skip: u64, errno: i32) {
        self.fs.borrow_mut().faults.push(Fault { op, skip, errno });
    }

    /// Makes writes complete after a pseudo-random number of yields drawn
    /// from `seed` (`None`: at once), as a real device reorders them.
    pub fn set_write_jitter(&self, seed: Option<u64>) {
        self.fs.borrow_mut().write_jitter = seed;
    }

    /// How many times `op` has been attempted on this disk.
    pub fn op_count(&self, op: DiskOp) -> u64 {
        self.fs.borrow().counts.get(&op).copied().unwrap_or(0)
    }

    /// Limits the bytes all files may hold together (ENOSPC beyond).
    pub fn set_capacity(&self, capacity_bytes: Option<u64>) {
        self.fs.borrow_mut().capacity_bytes = capacity_bytes;
    }

    /// Simulates power loss: every file goes back to its last synced
    /// contents. With `torn_blocks = Some(n)`, the first `n` blocks of the
    /// last unsynced write survive as well, as a device may persist part of
    /// a write. Faults are cleared, and so are folder locks. Open handles
    /// keep working on the new contents (reopen after a crash, as a
    /// restarted process would).
    pub fn crash(&self, torn_blocks: Option<usize>) {
        let mut fs = self.fs.borrow_mut();
        let torn = fs.last_write.take();
        for file in fs.files.values() {
            let mut f = file.borrow_mut();
            f.data = f.durable.clone();
        }
        if let (Some(n), Some((file, pos, bytes))) = (torn_blocks, torn) {
            let keep = (n * BLOCK_BYTES as usize).min(bytes.len());
            let mut f = file.borrow_mut();
            write_into(&mut f.data, pos, &bytes[..keep]);
            f.durable = f.data.clone();
        }
        fs.faults.clear();
        // The process that held them is gone.
        fs.locked.clear();
    }

    /// Overwrites bytes of a file directly, bypassing everything (for
    /// corruption tests). The change is durable.
    pub fn corrupt(&self, path: &Path, pos: u64, bytes: &[u8]) {
        if let Some(file) = self.fs.borrow().files.get(path) {
            let mut f = file.borrow_mut();
            write_into(&mut f.data, pos, bytes);
            write_into(&mut f.durable, pos, bytes);
        }
    }

    /// Opens `path` (a write-through file's writes are durable at once).
    fn open_file(
        &self,
        path: &Path,
        create: bool,
        write_through: bool,
    ) -> Result<MemDiskFile, DiskError> {
        let mut fs = self.fs.borrow_mut();
        fs.check(DiskOp::Open, path)?;
        let parent = path.parent().unwrap_or(Path::new(""));
        if !fs.dirs.contains(parent) {
            return Err(not_found("open", path));
        }
        let file = match fs.files.get(path) {
            Some(f) => f.clone(),
            None if create => {
                let f = Rc::new(RefCell::new(MemFile::default()));
                fs.files.insert(path.to_owned(), f.clone());
                f
            }
            None => return Err(not_found("open", path)),
        };
        Ok(MemDiskFile {
            fs: self.fs.clone(),
            file,
            path: path.to_owned(),
            write_through,
        })
    }

    /// Paths of all files, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.fs.borrow().files.keys().cloned().collect()
    }

    /// A file's current contents.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        self.fs
            .borrow()
            .files
            .get(path)
            .map(|f| f.borrow().data.clone())
    }
}

/// Returns `Pending` once (waking itself), then `Ready`.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

fn write_into(data: &mut Vec<u8>, pos: u64, bytes: &[u8]) {
    let pos = pos as usize;
    if data.len() < pos + bytes.len() {
        data.resize(pos + bytes.len(), 0);
    }
    data[pos..pos + bytes.len()].copy_from_slice(bytes);
}

fn not_found(op: &'static str, path: &Path) -> DiskError {
    DiskError::new(op, path, io::Error::from(io::ErrorKind::NotFound))
}

impl Disk for MemDisk {
    type File = MemDiskFile;
    type DirLock = MemDirLock;

    async fn open(&self, path: &Path, create: bool) -> Result<MemDiskFile, DiskError> {
        self.open_file(path, create, false)
    }

    async fn open_write_through(&self, path: &Path) -> Result<MemDiskFile, DiskError> {
        self.open_file(path, false, true)
    }

    async fn remove(&self, path: &Path) -> Result<(), DiskError> {
        let mut fs = self.fs.borrow_mut();
        fs.check(DiskOp::Remove, path)?;
        fs.files
            .remove(path)
            .map(drop)
            .ok_or_else(|| not_found("remove", path))
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError> {
        let mut fs = self.fs.borrow_mut();
        fs.check(DiskOp::Rename, from)?;
        let file = fs
            .files
            .remove(from)
            .ok_or_else(|| not_found("rename", from))?;
        fs.files.insert(to.to_owned(), file);
        Ok(())
    }

    async fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        let mut fs = self.fs.borrow_mut();
        for ancestor in dir.ancestors() {
            fs.dirs.insert(ancestor.to_owned());
        }
        Ok(())
    }

    async fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        let fs = self.fs.borrow();
        if !fs.dirs.contains(dir) {
            return Err(not_found("list", dir));
        }
        let mut names: Vec<String> = fs
            .files
            .keys()
            .chain(fs.dirs.iter())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn sync_dir(&self, _dir: &Path) -> Result<(), DiskError> {
        Ok(())
    }

    async fn lock_dir(&self, dir: &Path) -> Result<MemDirLock, DiskError> {
        let mut fs = self.fs.borrow_mut();
        if fs.locked.contains_key(dir) {
            return Err(DiskError::in_use(&dir.join(LOCK_FILE), ""));
        }
        fs.lock_tokens += 1;
        let token = fs.lock_tokens;
        fs.locked.insert(dir.to_owned(), token);
        Ok(MemDirLock {
            fs: self.fs.clone(),
            dir: dir.to_owned(),
            token,
        })
    }
}

/// A folder taken by [`MemDisk::lock_dir`], free again once dropped or
/// after [`MemDisk::crash`] (the holder's process died).
#[derive(Debug)]
pub struct MemDirLock {
    fs: Rc<RefCell<MemFs>>,
    dir: PathBuf,
    token: u64,
}

impl Drop for MemDirLock {
    fn drop(&mut self) {
        let mut fs = self.fs.borrow_mut();
        // After a crash the folder may belong to a newer holder already.
        if fs.locked.get(&self.dir) == Some(&self.token) {
            fs.locked.remove(&self.dir);
        }
    }
}

impl DiskFile for MemDiskFile {
    async fn write_parts_at(&self, pos: u64, parts: &[&[u8]], len: usize) -> Result<(), DiskError> {
        let yields = {
            let mut fs = self.fs.borrow_mut();
            fs.write_jitter.as_mut().map_or(0, |state| {
                // xorshift64*: enough to shuffle completions, and repeatable.
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 62
            })
        };
        for _ in 0..yields {
            YieldNow(false).await;
        }
        let mut data = vec![0u8; len];
        fill(&mut data, parts);
        debug_assert_eq!(pos % BLOCK_BYTES, 0, "unaligned write position");
        debug_assert_eq!(data.len() as u64 % BLOCK_BYTES, 0, "unaligned write length");
        let mut fs = self.fs.borrow_mut();
        fs.check(DiskOp::Write, &self.path)?;
        let file_len = self.file.borrow().data.len() as u64;
        fs.ensure_room(
            (pos + data.len() as u64).saturating_sub(file_len),
            "write",
            &self.path,
        )?;
        let mut file = self.file.borrow_mut();
        write_into(&mut file.data, pos, &data);
        if self.write_through {
            write_into(&mut file.durable, pos, &data);
        } else {
            drop(file);
            fs.last_write = Some((self.file.clone(), pos, data));
        }
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> Result<Bytes, DiskError> {
        self.fs.borrow_mut().check(DiskOp::Read, &self.path)?;
        let f = self.file.borrow();
        let from = (pos as usize).min(f.data.len());
        let to = (from + len).min(f.data.len());
        Ok(Bytes::copy_from_slice(&f.data[from..to]))
    }

    async fn sync(&self) -> Result<(), DiskError> {
        let mut fs = self.fs.borrow_mut();
        fs.check(DiskOp::Sync, &self.path)?;
        let mut f = self.file.borrow_mut();
        f.durable = f.data.clone();
        if fs
            .last_write
            .as_ref()
            .is_some_and(|(w, _, _)| Rc::ptr_eq(w, &self.file))
        {
            fs.last_write = None;
        }
        Ok(())
    }

    async fn allocate(&self, len: u64) -> Result<(), DiskError> {
        let mut fs = self.fs.borrow_mut();
        fs.check(DiskOp::Allocate, &self.path)?;
        let cur = self.file.borrow().data.len() as u64;
        if len > cur {
            fs.ensure_room(len - cur, "fallocate", &self.path)?;
            let mut f = self.file.borrow_mut();
            f.data.resize(len as usize, 0);
            // The size change is metadata; treat it as durable at once.
            if f.durable.len() < len as usize {
                f.durable.resize(len as usize, 0);
            }
        }
        Ok(())
    }

    async fn size(&self) -> Result<u64, DiskError> {
        Ok(self.file.borrow().data.len() as u64)
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_recognised_however_it_is_wrapped() {
        let at = Path::new("/data/commitlog/0.log");
        let raw = DiskError::new("write", at, io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(raw.is_no_space());
        // What glommio returns for a failed fallocate on a full disk.
        let wrapped = DiskError::new(
            "fallocate",
            at,
            io::Error::new(
                io::ErrorKind::StorageFull,
                "No space left on device (os error 28), op: Pre-allocate space",
            ),
        );
        assert!(wrapped.is_no_space());
        let other = DiskError::new("write", at, io::Error::from_raw_os_error(libc::EIO));
        assert!(!other.is_no_space());
    }
}
