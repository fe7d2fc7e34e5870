//! A virtio-fs share the guest can read but never change: msb_krun's passthrough file system
//! behind a filter that answers every mutating request with `EROFS`.
//!
//! msb_krun 0.1.42 has no read-only option for a shared directory, and a guest with root can
//! remount anything it sees read-write, so "read-only" must be enforced here, on the host side
//! of the device, as QEMU's `readonly=on` does for the 9p share. Invariants:
//! - no request reaches the passthrough that could create, remove, rename, link, write,
//!   truncate, change attributes or extended attributes, or allocate space: those methods are
//!   answered here with `EROFS` and never delegated;
//! - files are opened on the host only for reading (`O_RDONLY`, no `O_TRUNC`, no `O_CREAT`);
//! - ioctls, file locks and DAX mappings are refused (the passthrough implements libkrun's
//!   private ioctls, which a sandbox has no business calling);
//! - the passthrough's virtual `init.krun` (an aarch64 binary it injects into every share) is
//!   hidden, so the guest sees exactly the host directory.
//!
//! The passthrough clears the process umask when the guest mounts the share; this module puts
//! back the umask the process had when the share was created, so files the sandbox process
//! creates later keep their intended modes.

use std::ffi::CStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI32;
use std::sync::Arc;
use std::time::Duration;

use msb_krun::backends::fs::{
    stat64, statvfs64, AddDirEntry, AddDirEntryPlus, Context, DynFileSystem, Entry, Extensions,
    FsOptions, GetxattrReply, ListxattrReply, OpenOptions, RemovemappingOne, SetattrValid,
    ZeroCopyReader, ZeroCopyWriter,
};
use msb_krun_devices::virtio::fs::filesystem::FileSystem;
use msb_krun_devices::virtio::fs::passthrough::{CachePolicy, Config, PassthroughFs};

/// How long the guest may cache names and attributes. The share is an image root that does not
/// change under a running sandbox (the same assumption as qemu's 9p `cache=loose`).
const CACHE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Name of the virtual init file the passthrough injects; hidden from the guest.
const INJECTED_INIT: &[u8] = b"init.krun";

/// Open flags that would let the host file be changed.
const WRITE_FLAGS: i32 =
    libc::O_WRONLY | libc::O_RDWR | libc::O_TRUNC | libc::O_CREAT | libc::O_APPEND;

/// The share could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ReadOnlyFsError {
    /// The directory's path is not UTF-8, which the passthrough requires.
    #[error("shared directory {path} is not valid UTF-8")]
    NotUtf8 {
        /// The directory.
        path: PathBuf,
    },
    /// The directory does not exist or is not a directory.
    #[error("cannot share {path} with the guest: not an accessible directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The passthrough refused the directory.
    #[error("cannot share directory {path} with the guest")]
    Passthrough {
        /// The directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

/// A read-only view of one host directory for a virtio-fs device.
pub struct ReadOnlyFs {
    inner: PassthroughFs,
    umask: libc::mode_t,
}

impl ReadOnlyFs {
    /// Shares `dir` read-only.
    pub fn new(dir: &Path) -> Result<Self, ReadOnlyFsError> {
        let root =
            dir.to_str().ok_or_else(|| ReadOnlyFsError::NotUtf8 { path: dir.to_path_buf() })?;
        // The passthrough opens its root only when the guest mounts it; fail here instead.
        if !std::fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
            return Err(ReadOnlyFsError::NotADirectory { path: dir.to_path_buf() });
        }
        let config = Config {
            root_dir: root.to_owned(),
            cache_policy: CachePolicy::Always,
            entry_timeout: CACHE_TIMEOUT,
            attr_timeout: CACHE_TIMEOUT,
            writeback: false,
            xattr: true,
            ..Config::default()
        };
        let inner = PassthroughFs::new(config)
            .map_err(|source| ReadOnlyFsError::Passthrough { path: dir.to_path_buf(), source })?;
        Ok(Self { inner, umask: current_umask() })
    }
}

/// The process umask, read without changing it (`/proc/self/status`), else the usual 022.
fn current_umask() -> libc::mode_t {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| libc::mode_t::from_str_radix(v.trim(), 8).ok())
        .unwrap_or(0o022)
}

fn erofs<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::EROFS))
}

fn refused<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::ENOTTY))
}

fn is_injected_init(name: &CStr) -> bool {
    name.to_bytes() == INJECTED_INIT
}

/// Adapts the device's writer trait object to the passthrough's generic `read`. The
/// passthrough uses `io::Write` only for its injected init file, which this module hides.
struct Writer<'a>(&'a mut dyn ZeroCopyWriter);

impl ZeroCopyWriter for Writer<'_> {
    fn write_from(&mut self, f: &std::fs::File, count: usize, off: u64) -> io::Result<usize> {
        self.0.write_from(f, count, off)
    }
}

impl io::Write for Writer<'_> {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// Reading: delegated to the passthrough.
impl ReadOnlyFs {
    fn lookup_visible(&self, ctx: Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        if is_injected_init(name) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        self.inner.lookup(ctx, parent, name)
    }
}

impl DynFileSystem for ReadOnlyFs {
    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let options = self.inner.init(capable);
        // SAFETY: umask only sets the process file mode creation mask; it cannot fail.
        unsafe { libc::umask(self.umask) };
        options
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.lookup_visible(ctx, parent, name)
    }

    fn forget(&self, ctx: Context, inode: u64, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: Context, requests: Vec<(u64, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn readlink(&self, ctx: Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn open(
        &self,
        ctx: Context,
        inode: u64,
        kill_priv: bool,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        if flags as i32 & WRITE_FLAGS != 0 {
            return erofs();
        }
        self.inner.open(ctx, inode, kill_priv, flags)
    }

    fn read(
        &self,
        ctx: Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner.read(ctx, inode, handle, Writer(w), size, offset, lock_owner, flags)
    }

    fn flush(&self, ctx: Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, _ctx: Context, _inode: u64, _datasync: bool, _handle: u64) -> io::Result<()> {
        Ok(())
    }

    fn release(
        &self,
        ctx: Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner.release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: Context, inode: u64) -> io::Result<statvfs64> {
        let mut st = self.inner.statfs(ctx, inode)?;
        st.f_flag |= libc::ST_RDONLY;
        Ok(st)
    }

    fn getxattr(
        &self,
        ctx: Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }

    fn opendir(
        &self,
        ctx: Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir_for_each(
        &self,
        ctx: Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut AddDirEntry<'_>,
    ) -> io::Result<()> {
        self.inner.readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus_for_each(
        &self,
        ctx: Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut AddDirEntryPlus<'_>,
    ) -> io::Result<()> {
        self.inner.readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(
        &self,
        _ctx: Context,
        _inode: u64,
        _datasync: bool,
        _handle: u64,
    ) -> io::Result<()> {
        Ok(())
    }

    fn releasedir(&self, ctx: Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: Context, inode: u64, mask: u32) -> io::Result<()> {
        if mask as i32 & libc::W_OK != 0 {
            return erofs();
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    // Everything below would change the share: refused, never delegated.

    fn setattr(
        &self,
        _ctx: Context,
        _inode: u64,
        _attr: stat64,
        _handle: Option<u64>,
        _valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        erofs()
    }

    fn symlink(
        &self,
        _ctx: Context,
        _link: &CStr,
        _parent: u64,
        _name: &CStr,
        _ext: Extensions,
    ) -> io::Result<Entry> {
        erofs()
    }

    fn mknod(
        &self,
        _ctx: Context,
        _parent: u64,
        _name: &CStr,
        _mode: u32,
        _rdev: u32,
        _umask: u32,
        _ext: Extensions,
    ) -> io::Result<Entry> {
        erofs()
    }

    fn mkdir(
        &self,
        _ctx: Context,
        _parent: u64,
        _name: &CStr,
        _mode: u32,
        _umask: u32,
        _ext: Extensions,
    ) -> io::Result<Entry> {
        erofs()
    }

    fn unlink(&self, _ctx: Context, _parent: u64, _name: &CStr) -> io::Result<()> {
        erofs()
    }

    fn rmdir(&self, _ctx: Context, _parent: u64, _name: &CStr) -> io::Result<()> {
        erofs()
    }

    fn rename(
        &self,
        _ctx: Context,
        _olddir: u64,
        _old: &CStr,
        _newdir: u64,
        _new: &CStr,
        _flags: u32,
    ) -> io::Result<()> {
        erofs()
    }

    fn link(
        &self,
        _ctx: Context,
        _inode: u64,
        _newparent: u64,
        _newname: &CStr,
    ) -> io::Result<Entry> {
        erofs()
    }

    fn create(
        &self,
        _ctx: Context,
        _parent: u64,
        _name: &CStr,
        _mode: u32,
        _kill_priv: bool,
        _flags: u32,
        _umask: u32,
        _ext: Extensions,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions)> {
        erofs()
    }

    fn write(
        &self,
        _ctx: Context,
        _inode: u64,
        _handle: u64,
        _r: &mut dyn ZeroCopyReader,
        _size: u32,
        _offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _kill_priv: bool,
        _flags: u32,
    ) -> io::Result<usize> {
        erofs()
    }

    fn fallocate(
        &self,
        _ctx: Context,
        _inode: u64,
        _handle: u64,
        _mode: u32,
        _offset: u64,
        _len: u64,
    ) -> io::Result<()> {
        erofs()
    }

    fn setxattr(
        &self,
        _ctx: Context,
        _inode: u64,
        _name: &CStr,
        _value: &[u8],
        _flags: u32,
    ) -> io::Result<()> {
        erofs()
    }

    fn removexattr(&self, _ctx: Context, _inode: u64, _name: &CStr) -> io::Result<()> {
        erofs()
    }

    fn copyfilerange(
        &self,
        _ctx: Context,
        _inode_in: u64,
        _handle_in: u64,
        _offset_in: u64,
        _inode_out: u64,
        _handle_out: u64,
        _offset_out: u64,
        _len: u64,
        _flags: u64,
    ) -> io::Result<usize> {
        erofs()
    }

    fn setupmapping(
        &self,
        _ctx: Context,
        _inode: u64,
        _handle: u64,
        _foffset: u64,
        _len: u64,
        _flags: u64,
        _moffset: u64,
        _host_shm_base: u64,
        _shm_size: u64,
    ) -> io::Result<()> {
        refused()
    }

    fn removemapping(
        &self,
        _ctx: Context,
        _requests: Vec<RemovemappingOne>,
        _host_shm_base: u64,
        _shm_size: u64,
    ) -> io::Result<()> {
        refused()
    }

    fn ioctl(
        &self,
        _ctx: Context,
        _inode: u64,
        _handle: u64,
        _flags: u32,
        _cmd: u32,
        _arg: u64,
        _in_size: u32,
        _out_size: u32,
        _exit_code: &Arc<AtomicI32>,
    ) -> io::Result<Vec<u8>> {
        refused()
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use super::*;

    /// Inode number of the share's root in FUSE.
    const ROOT: u64 = 1;

    fn ctx() -> Context {
        Context { uid: 0, gid: 0, pid: 0 }
    }

    fn name(text: &str) -> CString {
        CString::new(text).unwrap()
    }

    /// Serializes share set-up: the passthrough clears the process-wide umask while it mounts,
    /// and a share created in that window would remember 0 as the umask to restore.
    static UMASK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn share() -> (tempfile::TempDir, ReadOnlyFs) {
        let _serial = UMASK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"content").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let fs = ReadOnlyFs::new(dir.path()).unwrap();
        fs.init(FsOptions::empty()).unwrap();
        (dir, fs)
    }

    #[test]
    fn reads_are_served_from_the_host_directory() {
        let (_dir, fs) = share();
        let entry = fs.lookup(ctx(), ROOT, &name("file")).unwrap();
        assert_eq!(entry.attr.st_size, 7);
        let (handle, _) = fs.open(ctx(), entry.inode, false, libc::O_RDONLY as u32).unwrap();
        fs.release(ctx(), entry.inode, 0, handle.unwrap(), false, false, None).unwrap();
        assert!(fs.lookup(ctx(), ROOT, &name("sub")).is_ok());
        fs.access(ctx(), entry.inode, libc::R_OK as u32).unwrap();
    }

    #[test]
    fn every_mutation_is_refused_and_the_directory_is_unchanged() {
        let (dir, fs) = share();
        let file = fs.lookup(ctx(), ROOT, &name("file")).unwrap().inode;
        let rofs = |r: io::Result<()>| assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));

        for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC, libc::O_APPEND]
        {
            rofs(fs.open(ctx(), file, false, flags as u32).map(drop));
        }
        rofs(fs.access(ctx(), file, libc::W_OK as u32));
        rofs(fs.mkdir(ctx(), ROOT, &name("new"), 0o755, 0, Extensions::default()).map(drop));
        rofs(fs.unlink(ctx(), ROOT, &name("file")));
        rofs(fs.rmdir(ctx(), ROOT, &name("sub")));
        rofs(fs.rename(ctx(), ROOT, &name("file"), ROOT, &name("moved"), 0));
        rofs(
            fs.symlink(ctx(), &name("/etc"), ROOT, &name("link"), Extensions::default()).map(drop),
        );
        rofs(fs.link(ctx(), file, ROOT, &name("hard")).map(drop));
        let create =
            fs.create(ctx(), ROOT, &name("new"), 0o644, false, 0, 0, Extensions::default());
        rofs(create.map(drop));
        rofs(fs.setxattr(ctx(), file, &name("user.x"), b"1", 0));
        rofs(fs.removexattr(ctx(), file, &name("user.x")));
        rofs(fs.fallocate(ctx(), file, 0, 0, 0, 1 << 20));

        let names: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(std::fs::read(dir.path().join("file")).unwrap(), b"content");
        assert!(fs.statfs(ctx(), ROOT).unwrap().f_flag & libc::ST_RDONLY != 0);
    }

    #[test]
    fn the_injected_aarch64_init_is_hidden() {
        let (_dir, fs) = share();
        let err = fs.lookup(ctx(), ROOT, &name("init.krun")).err().expect("init.krun is visible");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn libkrun_private_ioctls_are_refused() {
        let (_dir, fs) = share();
        let code = Arc::new(AtomicI32::new(0));
        let err = fs.ioctl(ctx(), ROOT, 0, 0, 0x7602, 0, 0, 0, &code).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }

    #[test]
    fn mounting_the_share_keeps_the_process_umask() {
        let before = {
            let _serial = UMASK.lock().unwrap_or_else(|e| e.into_inner());
            current_umask()
        };
        let (_dir, _fs) = share();
        let _serial = UMASK.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(current_umask(), before);
    }
}
