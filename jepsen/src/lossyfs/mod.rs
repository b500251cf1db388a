//! `jepsen lossyfs`: a FUSE passthrough file system that forgets what was never synced.
//!
//! A SIGKILL'd process loses nothing its writes handed to the kernel: the page cache
//! survives it, so a missing fsync goes unnoticed. Under lossyfs, written bytes stay in
//! this process's memory, per inode, until an fsync or fdatasync of the file writes them
//! to the backing directory; reads see them overlaid on the backing file. Killing this
//! process is a power cut: every unsynced byte is gone, and a new lossyfs over the same
//! backing directory shows the disk as it would be after the reboot.
//!
//! Deliberate simplifications, enough for a database on top: metadata operations
//! (create, rename, unlink, mkdir, truncate, chmod) pass straight through and are durable
//! at once, as on a file system that journals metadata synchronously; every open is
//! direct I/O and there is no writeback cache, so the kernel holds no file data of its
//! own; a file opened `O_SYNC`/`O_DSYNC` writes through; nothing is ever written back in
//! the background (the worst case of a power cut just before writeback).
//!
//! `SIGTERM` is the power switch: it prints what is being dropped (the evidence that a
//! power fault took effect) and exits at once without writing anything.

mod dirty;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

pub use dirty::Dirty;

/// Attributes and entries are never cached by the kernel: sizes include unsynced bytes,
/// which only this process knows.
const TTL: Duration = Duration::ZERO;

/// Runs the file system in the foreground until it is unmounted or powered off.
pub fn run(backing: &Path, mountpoint: &Path) -> anyhow::Result<()> {
    let backing = fs::canonicalize(backing).with_context(|| format!("backing dir {}", backing.display()))?;
    let fs = LossyFs::new(backing.clone())?;
    let state = fs.state.clone();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM])?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            power_off(&state);
        }
    });
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("lossyfs:{}", backing.display())),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::RW,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(4);
    eprintln!("lossyfs: {} over {}", mountpoint.display(), backing.display());
    fuser::mount(fs, mountpoint, &config).context("mounting lossyfs")?;
    Ok(())
}

/// The power switch: report what dies with this process, then exit without writing.
fn power_off(state: &Mutex<State>) -> ! {
    let mut files: Vec<(u64, usize, String)> = match state.lock() {
        Ok(s) => {
            let root = s.inodes.get(&INodeNo::ROOT.0).map(|r| r.path.clone()).unwrap_or_default();
            s.inodes
                .values()
                .filter(|i| !i.dirty.is_empty())
                .map(|i| {
                    let name = i.path.strip_prefix(&root).unwrap_or(&i.path).display().to_string();
                    (i.dirty.bytes(), i.dirty.len(), name)
                })
                .collect()
        }
        Err(_) => Vec::new(),
    };
    files.sort_unstable_by(|a, b| b.cmp(a));
    let (bytes, ranges) = files.iter().fold((0, 0), |(b, r), f| (b + f.0, r + f.1));
    let largest: Vec<String> = files.iter().take(4).map(|(b, _, name)| format!("{name} {b} B")).collect();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "lossyfs: power off: dropped {bytes} unsynced bytes in {ranges} ranges of {} files ({})",
        files.len(),
        largest.join(", ")
    );
    let _ = err.flush();
    std::process::exit(0)
}

/// One file or directory of the backing tree.
struct Inode {
    /// Where it is now (kept current by lookup, create and rename).
    path: PathBuf,
    dirty: Dirty,
    /// A writable handle, kept while there are unsynced bytes, so an fsync through any
    /// descriptor (even a read-only one) can write them.
    writer: Option<Arc<File>>,
}

struct Handle {
    ino: u64,
    file: Arc<File>,
    /// Opened `O_SYNC` or `O_DSYNC`: every write goes to disk before it returns.
    write_through: bool,
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    /// Backing (device, inode) → our inode number.
    by_backing: HashMap<(u64, u64), u64>,
    next_ino: u64,
    files: HashMap<u64, Handle>,
    dirs: HashMap<u64, Vec<(u64, FileType, OsString)>>,
    next_fh: u64,
}

pub struct LossyFs {
    state: Arc<Mutex<State>>,
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from(e)
}

fn kind_of(m: &fs::Metadata) -> FileType {
    FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH
    }
}

impl State {
    /// Our inode for a backing file, registering it (at `path`) if new. A file created
    /// through us is `fresh`: whatever an earlier, deleted file with the same backing
    /// inode number left in memory is not its content.
    fn inode_for(&mut self, m: &fs::Metadata, path: &Path, fresh: bool) -> u64 {
        let key = (m.dev(), m.ino());
        if let Some(&ino) = self.by_backing.get(&key) {
            let node = self.inodes.get_mut(&ino).expect("registered");
            node.path = path.to_path_buf();
            if fresh {
                node.dirty = Dirty::default();
                node.writer = None;
            }
            return ino;
        }
        self.next_ino += 1;
        let ino = self.next_ino;
        self.by_backing.insert(key, ino);
        self.inodes.insert(ino, Inode { path: path.to_path_buf(), dirty: Dirty::default(), writer: None });
        ino
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.inodes.get(&ino.0).map(|i| i.path.clone()).ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64, m: &fs::Metadata) -> FileAttr {
        let dirty_end = self.inodes.get(&ino).map_or(0, |i| i.dirty.end());
        FileAttr {
            ino: INodeNo(ino),
            size: if m.is_file() { m.len().max(dirty_end) } else { m.len() },
            blocks: m.blocks(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind_of(m),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    fn add_handle(&mut self, ino: u64, file: File, flags: i32) -> u64 {
        let file = Arc::new(file);
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if writable {
            self.inodes.get_mut(&ino).expect("registered").writer.get_or_insert_with(|| file.clone());
        }
        self.next_fh += 1;
        let write_through = flags & (libc::O_SYNC | libc::O_DSYNC) != 0;
        self.files.insert(self.next_fh, Handle { ino, file, write_through });
        self.next_fh
    }

    /// After an unlink or a rename over it: a file left with no name and no open handle
    /// is gone, and so are its unsynced bytes (they would never reach a disk).
    /// (An open one keeps them until its last handle is released.)
    fn forget_if_unlinked(&mut self, m: &fs::Metadata) {
        let Some(&ino) = self.by_backing.get(&(m.dev(), m.ino())) else { return };
        let open = self.files.values().any(|h| h.ino == ino);
        if let Some(node) = self.inodes.get_mut(&ino) {
            if m.nlink() <= 1 && !open {
                node.dirty = Dirty::default();
                node.writer = None;
            }
        }
    }

    /// Moves the recorded paths of `from` and everything below it to `to`.
    fn renamed(&mut self, from: &Path, to: &Path) {
        for node in self.inodes.values_mut() {
            if let Ok(rest) = node.path.strip_prefix(from) {
                node.path = if rest.as_os_str().is_empty() { to.to_path_buf() } else { to.join(rest) };
            }
        }
    }
}

fn open_options(flags: i32) -> OpenOptions {
    let mut o = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => o.write(true),
        libc::O_RDWR => o.read(true).write(true),
        _ => o.read(true),
    };
    // The kernel passes offsets for every write, also under O_APPEND, and handles
    // O_TRUNC with a setattr; the backing descriptor needs neither (an O_APPEND backing
    // fd would ignore our offsets). Direct I/O is ours to do, not the backing file's.
    o.custom_flags(flags & !(libc::O_APPEND | libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL | libc::O_DIRECT));
    o
}

impl LossyFs {
    pub fn new(backing: PathBuf) -> anyhow::Result<LossyFs> {
        let m = fs::metadata(&backing)?;
        let mut state = State { next_ino: 1, next_fh: 0, ..State::default() };
        state.by_backing.insert((m.dev(), m.ino()), INodeNo::ROOT.0);
        state.inodes.insert(INodeNo::ROOT.0, Inode { path: backing, dirty: Dirty::default(), writer: None });
        Ok(LossyFs { state: Arc::new(Mutex::new(state)) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.lock().path(parent)?.join(name))
    }

    /// Registers a path that now exists and answers with its entry.
    fn entry(&self, path: &Path, fresh: bool, reply: ReplyEntry) {
        match fs::symlink_metadata(path) {
            Ok(m) => {
                let mut s = self.lock();
                let ino = s.inode_for(&m, path, fresh);
                reply.entry(&TTL, &s.attr(ino, &m), Generation(0));
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Writes an inode's unsynced bytes to the backing file and syncs it.
    fn flush_to_disk(&self, ino: u64, fh: Option<u64>, datasync: bool) -> Result<(), Errno> {
        let (snapshot, writer) = {
            let s = self.lock();
            let node = s.inodes.get(&ino).ok_or(Errno::ENOENT)?;
            let fallback = fh.and_then(|fh| s.files.get(&fh)).map(|h| h.file.clone());
            (node.dirty.clone(), node.writer.clone().or(fallback))
        };
        let Some(file) = writer else { return Ok(()) };
        for (offset, bytes) in snapshot.ranges() {
            file.write_all_at(bytes, *offset).map_err(errno)?;
        }
        if datasync { file.sync_data() } else { file.sync_all() }.map_err(errno)?;
        let mut s = self.lock();
        if let Some(node) = s.inodes.get_mut(&ino) {
            node.dirty.forget_flushed(&snapshot);
        }
        Ok(())
    }
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name) {
            Ok(path) => self.entry(&path, false, reply),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let handle = fh.and_then(|fh| self.lock().files.get(&fh.0).map(|h| h.file.clone()));
        let meta = match handle {
            Some(f) => f.metadata(),
            None => match self.lock().path(ino) {
                Ok(p) => fs::symlink_metadata(p),
                Err(e) => return reply.error(e),
            },
        };
        match meta {
            Ok(m) => reply.attr(&TTL, &self.lock().attr(ino.0, &m)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let path = match self.lock().path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let result = (|| -> std::io::Result<fs::Metadata> {
            if let Some(mode) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid)?;
            }
            if let Some(size) = size {
                // A truncate is metadata: durable at once, and it cuts unsynced bytes too.
                let handle = fh.and_then(|fh| self.lock().files.get(&fh.0).map(|h| h.file.clone()));
                match handle {
                    Some(f) if f.set_len(size).is_ok() => {}
                    _ => OpenOptions::new().write(true).open(&path)?.set_len(size)?,
                }
                if let Some(node) = self.lock().inodes.get_mut(&ino.0) {
                    node.dirty.truncate(size);
                }
            }
            // Times are not carried over: nothing on top of lossyfs depends on them.
            fs::symlink_metadata(&path)
        })();
        match result {
            Ok(m) => reply.attr(&TTL, &self.lock().attr(ino.0, &m)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.lock().path(ino).map(|p| fs::read_link(p).map_err(errno)) {
            Ok(Ok(target)) => reply.data(target.as_os_str().as_encoded_bytes()),
            Ok(Err(e)) | Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match OpenOptions::new().write(true).create_new(true).mode(mode & !umask & 0o7777).open(&path) {
            Ok(_) => self.entry(&path, true, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let made = fs::create_dir(&path)
            .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(mode & !umask & 0o7777)));
        match made {
            Ok(()) => self.entry(&path, true, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let gone = fs::symlink_metadata(&path).ok();
        match fs::remove_file(&path) {
            Ok(()) => {
                if let Some(m) = gone {
                    self.lock().forget_if_unlinked(&m);
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.child(parent, name).map(|p| fs::remove_dir(p).map_err(errno)) {
            Ok(Ok(())) => reply.ok(),
            Ok(Err(e)) | Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let path = match self.child(parent, link_name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match std::os::unix::fs::symlink(target, &path) {
            Ok(()) => self.entry(&path, true, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let (from, to) = match (self.child(parent, name), self.child(newparent, newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let replaced = fs::symlink_metadata(&to).ok();
        match fs::rename(&from, &to) {
            Ok(()) => {
                let mut s = self.lock();
                if let Some(m) = replaced {
                    s.forget_if_unlinked(&m);
                }
                s.renamed(&from, &to);
                reply.ok()
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let (from, to) = match (self.lock().path(ino), self.child(newparent, newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        match fs::hard_link(&from, &to) {
            Ok(()) => self.entry(&to, false, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.lock().path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match open_options(flags.0).open(&path) {
            Ok(file) => {
                let fh = self.lock().add_handle(ino.0, file, flags.0);
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Unsynced bytes first, then the disk: an fsync that lands in between has written
        // them to the disk, so either way the read sees them.
        let (file, dirty) = {
            let s = self.lock();
            let Some(h) = s.files.get(&fh.0) else { return reply.error(Errno::EBADF) };
            (h.file.clone(), s.inodes.get(&ino.0).map(|i| i.dirty.clone()).unwrap_or_default())
        };
        let on_disk = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return reply.error(errno(e)),
        };
        let size_now = on_disk.max(dirty.end());
        if offset >= size_now {
            return reply.data(&[]);
        }
        let mut buf = vec![0u8; (size as u64).min(size_now - offset) as usize];
        let from_disk = (on_disk.saturating_sub(offset) as usize).min(buf.len());
        let mut done = 0;
        while done < from_disk {
            match file.read_at(&mut buf[done..from_disk], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) => return reply.error(errno(e)),
            }
        }
        dirty.overlay(offset, &mut buf);
        reply.data(&buf)
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let through = {
            let mut s = self.lock();
            let Some(h) = s.files.get(&fh.0) else { return reply.error(Errno::EBADF) };
            let through = h.write_through.then(|| h.file.clone());
            let Some(node) = s.inodes.get_mut(&ino.0) else { return reply.error(Errno::ENOENT) };
            node.dirty.write(offset, data);
            through
        };
        if through.is_some() {
            if let Err(e) = self.flush_to_disk(ino.0, Some(fh.0), true) {
                return reply.error(e);
            }
        }
        reply.written(data.len() as u32)
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close() is not a sync: unsynced bytes stay unsynced.
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        s.files.remove(&fh.0);
        // Keep the writer only while it has something to write; the bytes of a file that
        // lost its last name go with its last handle.
        let open = s.files.values().any(|h| h.ino == ino.0);
        if let Some(node) = s.inodes.get_mut(&ino.0) {
            let unlinked = node.writer.as_ref().and_then(|w| w.metadata().ok()).is_some_and(|m| m.nlink() == 0);
            if !open && unlinked {
                node.dirty = Dirty::default();
            }
            if node.dirty.is_empty() && !open {
                node.writer = None;
            }
        }
        reply.ok()
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        match self.flush_to_disk(ino.0, Some(fh.0), datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.lock().path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let listing = (|| -> std::io::Result<Vec<(PathBuf, fs::Metadata, OsString)>> {
            let mut out = Vec::new();
            for entry in fs::read_dir(&path)? {
                let entry = entry?;
                if let Ok(m) = fs::symlink_metadata(entry.path()) {
                    out.push((entry.path(), m, entry.file_name()));
                }
            }
            Ok(out)
        })();
        match listing {
            Ok(listing) => {
                let mut s = self.lock();
                let mut entries = vec![
                    (ino.0, FileType::Directory, OsString::from(".")),
                    (ino.0, FileType::Directory, OsString::from("..")),
                ];
                for (p, m, name) in listing {
                    let child = s.inode_for(&m, &p, false);
                    entries.push((child, kind_of(&m), name));
                }
                s.next_fh += 1;
                let fh = s.next_fh;
                s.dirs.insert(fh, entries);
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let s = self.lock();
        let Some(entries) = s.dirs.get(&fh.0) else { return reply.error(Errno::EBADF) };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.lock().dirs.remove(&fh.0);
        reply.ok()
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.lock().path(ino).map(|p| File::open(p).and_then(|d| d.sync_all()).map_err(errno)) {
            Ok(Ok(())) => reply.ok(),
            Ok(Err(e)) | Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let path = match self.lock().path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match nix::sys::statvfs::statvfs(&path) {
            Ok(v) => reply.statfs(
                v.blocks(),
                v.blocks_free(),
                v.blocks_available(),
                v.files(),
                v.files_free(),
                v.block_size() as u32,
                v.name_max() as u32,
                v.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let path = match self.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let mut o = open_options(flags);
        o.create(true).mode(mode & !umask & 0o7777);
        if flags & libc::O_EXCL != 0 {
            o.create_new(true);
        }
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            // open(2) creates a file even read-only; std wants write access for that.
            o.write(true);
        }
        let existed = fs::symlink_metadata(&path).is_ok();
        let opened = o.open(&path).and_then(|f| Ok((fs::symlink_metadata(&path)?, f)));
        match opened {
            Ok((m, file)) => {
                let mut s = self.lock();
                // O_CREAT without O_EXCL may open an existing file, which keeps its bytes.
                let ino = s.inode_for(&m, &path, !existed);
                if flags & libc::O_TRUNC != 0 {
                    if let Err(e) = file.set_len(0) {
                        return reply.error(errno(e));
                    }
                    s.inodes.get_mut(&ino).expect("registered").dirty = Dirty::default();
                }
                let fh = s.add_handle(ino, file, flags);
                let attr = s.attr(ino, &m);
                reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(file) = self.lock().files.get(&fh.0).map(|h| h.file.clone()) else {
            return reply.error(Errno::EBADF);
        };
        let flags = nix::fcntl::FallocateFlags::from_bits_truncate(mode);
        match nix::fcntl::fallocate(&*file, flags, offset as i64, length as i64) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }
}
