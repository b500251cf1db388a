//! lossyfs's self-test, against the real binary on a real FUSE mount (needs root and
//! /dev/fuse, as the chaos suite does): a power cut loses what was never synced and keeps
//! what was.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Mount {
    child: Option<Child>,
    mountpoint: PathBuf,
    log: PathBuf,
}

impl Mount {
    fn start(backing: &Path, mountpoint: &Path, log: &Path) -> Mount {
        let child = Command::new(env!("CARGO_BIN_EXE_jepsen"))
            .arg("lossyfs")
            .arg("--backing")
            .arg(backing)
            .arg("--mountpoint")
            .arg(mountpoint)
            .stdout(Stdio::null())
            .stderr(File::create(log).expect("log"))
            .spawn()
            .expect("lossyfs starts");
        let m = Mount { child: Some(child), mountpoint: mountpoint.to_path_buf(), log: log.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(10);
        let parent_dev = fs::metadata(mountpoint.parent().expect("parent")).expect("parent").dev();
        while fs::metadata(mountpoint).map(|md| md.dev()).unwrap_or(parent_dev) == parent_dev {
            assert!(
                Instant::now() < deadline,
                "lossyfs did not mount: {}",
                fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// The power switch: SIGTERM, then detach the dead mount. Returns the daemon's report.
    fn power_off(&mut self) -> String {
        let mut child = self.child.take().expect("running");
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
        child.wait().expect("lossyfs exits");
        nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH).expect("unmount");
        fs::read_to_string(&self.log).expect("log")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.power_off();
        }
    }
}

fn write_file(path: &Path, data: &[u8], sync: bool) {
    let mut f = File::create(path).expect("create");
    f.write_all(data).expect("write");
    if sync {
        f.sync_all().expect("fsync");
    }
}

#[test]
fn a_power_cut_loses_unsynced_writes_and_keeps_synced_ones() {
    assert!(nix::unistd::Uid::effective().is_root(), "lossyfs needs root (mount(2)) and /dev/fuse");
    let root = std::env::temp_dir().join(format!("lossyfs-test-{}", std::process::id()));
    let (backing, mnt) = (root.join("disk"), root.join("mnt"));
    fs::create_dir_all(&backing).expect("backing");
    fs::create_dir_all(&mnt).expect("mountpoint");
    let mut m = Mount::start(&backing, &mnt, &root.join("lossyfs-1.log"));

    write_file(&mnt.join("synced"), b"kept", true);
    write_file(&mnt.join("unsynced"), b"lost", false);
    // A synced prefix, then an unsynced tail and an unsynced overwrite inside the prefix.
    let mut log = OpenOptions::new().create(true).append(true).open(mnt.join("log")).expect("log");
    log.write_all(b"first;").expect("write");
    log.sync_data().expect("fdatasync");
    log.write_all(b"second;").expect("write");
    let f = OpenOptions::new().write(true).open(mnt.join("log")).expect("reopen");
    std::os::unix::fs::FileExt::write_all_at(&f, b"X", 0).expect("pwrite");
    drop((log, f));
    // O_DSYNC writes are durable when they return.
    let mut dsync = OpenOptions::new()
        .create(true)
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(mnt.join("dsync"))
        .expect("o_dsync");
    dsync.write_all(b"durable").expect("write");
    drop(dsync);
    // Write to a temp file, fsync, rename: the pattern every careful writer uses.
    fs::create_dir(mnt.join("dir")).expect("mkdir");
    write_file(&mnt.join("dir/tmp"), b"renamed", true);
    fs::rename(mnt.join("dir/tmp"), mnt.join("dir/final")).expect("rename");
    // An fsync through a read-only descriptor still writes the unsynced bytes.
    write_file(&mnt.join("reopened"), b"synced later", false);
    File::open(mnt.join("reopened")).expect("open").sync_all().expect("fsync via O_RDONLY");

    // Before the cut, every write is visible, and sizes include the unsynced bytes.
    assert_eq!(fs::read(mnt.join("unsynced")).expect("read"), b"lost");
    assert_eq!(fs::read(mnt.join("log")).expect("read"), b"Xirst;second;");
    assert_eq!(fs::metadata(mnt.join("log")).expect("stat").len(), 13);
    // ...but the backing directory, the disk, holds only what was synced.
    assert_eq!(fs::read(backing.join("unsynced")).expect("read"), b"");
    assert_eq!(fs::read(backing.join("log")).expect("read"), b"first;");

    let report = m.power_off();
    assert!(report.contains("power off: dropped"), "{report}");
    let mut m2 = Mount::start(&backing, &mnt, &root.join("lossyfs-2.log"));
    assert_eq!(fs::read(mnt.join("synced")).expect("read"), b"kept");
    assert_eq!(fs::read(mnt.join("unsynced")).expect("read"), b"", "an unsynced write survived the power cut");
    assert_eq!(fs::read(mnt.join("log")).expect("read"), b"first;");
    assert_eq!(fs::read(mnt.join("dsync")).expect("read"), b"durable");
    assert_eq!(fs::read(mnt.join("dir/final")).expect("read"), b"renamed");
    assert!(!mnt.join("dir/tmp").exists());
    assert_eq!(fs::read(mnt.join("reopened")).expect("read"), b"synced later");
    m2.power_off();
    drop((m, m2));
    fs::remove_dir_all(&root).expect("cleanup");
}
