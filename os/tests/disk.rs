//! Disk limits on the scratch dir against the real kernel (loop devices, ext4), as root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use trellis_core::api::{DiskLimits, DiskScope};
use trellis_os::linux::disk::{DiskQuotas, ImageUsage};
use trellis_os::Layout;

struct Fixture {
    _dir: tempfile::TempDir,
    layout: Layout,
    disks: DiskQuotas,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::new(
        dir.path().join("depot"),
        dir.path().join("state"),
        dir.path().join("run"),
    );
    let disks = DiskQuotas::new(&layout);
    Fixture {
        _dir: dir,
        layout,
        disks,
    }
}

/// Releases the scratch when the test ends, pass or fail, so no mount or loop device leaks.
struct Released<'a>(&'a Fixture, &'a str);

impl Drop for Released<'_> {
    fn drop(&mut self) {
        let _ = self.0.disks.release_scratch(self.1);
    }
}

fn limits(byte_hard: u64, inode_hard: u64, scope: DiskScope) -> DiskLimits {
    DiskLimits {
        byte_hard,
        inode_hard,
        scope,
        ..DiskLimits::default()
    }
}

const IMAGE: ImageUsage = ImageUsage {
    bytes: 4 << 20,
    inodes: 300,
};

/// Writes `mib` MiB with dd, as a container would into its upper dir: (success, stderr).
fn dd(dir: &Path, name: &str, mib: u64) -> (bool, String) {
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", dir.join(name).display()))
        .arg("bs=1M")
        .arg(format!("count={mib}"))
        .arg("conv=fsync")
        .output()
        .expect("run dd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(path.to_str().expect("utf8")))
}

/// Loop devices whose backing file is (or was) under `dir`.
fn loops_under(dir: &Path) -> usize {
    std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
        .filter(|b| Path::new(b.trim_end()).starts_with(dir))
        .count()
}

fn upper(f: &Fixture, handle: &str) -> PathBuf {
    let upper = f.layout.scratch_dir(handle).join("upper");
    std::fs::create_dir_all(&upper).expect("upper dir");
    upper
}

#[test]
fn exclusive_limit_rejects_writes_beyond_it_and_usage_tracks_writes() {
    let f = fixture();
    let handle = "excl";
    let _release = Released(&f, handle);
    let started = Instant::now();
    f.disks
        .prepare_scratch(handle, &limits(10 << 20, 0, DiskScope::Exclusive), IMAGE)
        .expect("prepare");
    println!("disk-limited scratch prepared in {:?}", started.elapsed());
    f.disks
        .prepare_scratch(handle, &limits(10 << 20, 0, DiskScope::Exclusive), IMAGE)
        .expect("prepare again is fine");
    let scratch = f.layout.scratch_dir(handle);
    assert!(mounted(&scratch));
    let upper = upper(&f, handle);

    let fresh = f.disks.usage(handle).expect("usage");
    assert!(fresh.exclusive_bytes_used < 64 << 10, "{fresh:?}");
    let (ok, err) = dd(&upper, "nine", 9);
    assert!(ok, "9 MiB fits in 10 MiB: {err}");
    let used = f.disks.usage(handle).expect("usage");
    let nine = 9u64 << 20;
    assert!(
        used.exclusive_bytes_used >= nine && used.exclusive_bytes_used < nine + (256 << 10),
        "{used:?}"
    );
    assert_eq!(
        used.total_bytes_used,
        used.exclusive_bytes_used + IMAGE.bytes
    );
    assert!(
        used.exclusive_inodes_used >= 2,
        "upper dir and file: {used:?}"
    );
    assert_eq!(
        used.total_inodes_used,
        used.exclusive_inodes_used + IMAGE.inodes
    );

    let (ok, err) = dd(&upper, "two-more", 2);
    assert!(!ok, "11 MiB must not fit in 10 MiB");
    assert!(err.contains("No space left on device"), "{err}");

    let image = f.layout.scratch_image(handle);
    let base = f._dir.path();
    assert_eq!(loops_under(base), 1);
    let started = Instant::now();
    f.disks.release_scratch(handle).expect("release");
    println!("disk-limited scratch released in {:?}", started.elapsed());
    assert!(!mounted(&scratch));
    assert!(!image.exists());
    assert_eq!(loops_under(base), 0, "the loop device is detached");
    // The image is deleted off the destroy path, soon after.
    let trash = f.layout.scratch_trash_dir();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_dir(&trash).map_or(0, |d| d.count()) > 0 {
        assert!(
            Instant::now() < deadline,
            "the released image was never deleted"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    f.disks
        .release_scratch(handle)
        .expect("release again is fine");
    assert_eq!(f.disks.usage(handle).expect("usage"), Default::default());
}

#[test]
fn total_limit_counts_the_image() {
    let f = fixture();
    let handle = "total";
    let _release = Released(&f, handle);
    f.disks
        .prepare_scratch(handle, &limits(20 << 20, 0, DiskScope::Total), IMAGE)
        .expect("prepare");
    let upper = upper(&f, handle);
    let fresh = f.disks.usage(handle).expect("usage");
    assert!(fresh.total_bytes_used > fresh.exclusive_bytes_used);
    assert!(fresh.total_bytes_used >= IMAGE.bytes);
    let (ok, err) = dd(&upper, "seven", 7);
    assert!(ok, "7 MiB fits beside a 4 MiB image in 20 MiB: {err}");
    let (ok, _) = dd(&upper, "twenty", 20);
    assert!(!ok, "20 MiB cannot fit once the image counts");
    std::fs::remove_file(upper.join("twenty")).expect("rm");
    let (ok, err) = dd(&upper, "eight", 8);
    assert!(ok, "7 + 8 MiB fit in the 16 MiB left: {err}");
}

#[test]
fn a_limit_smaller_than_the_image_fails_and_leaves_nothing() {
    let f = fixture();
    let handle = "small";
    let err = f
        .disks
        .prepare_scratch(handle, &limits(1 << 20, 0, DiskScope::Total), IMAGE)
        .expect_err("1 MiB cannot hold a 4 MiB image");
    assert_eq!(err.to_string(), "disk limit is smaller than volume size");
    assert!(!f.layout.scratch_image(handle).exists());
    assert!(!mounted(&f.layout.scratch_dir(handle)));
}

#[test]
fn inode_limit_stops_file_creation() {
    let f = fixture();
    let handle = "inodes";
    let _release = Released(&f, handle);
    f.disks
        .prepare_scratch(handle, &limits(0, 100, DiskScope::Exclusive), IMAGE)
        .expect("prepare");
    let upper = upper(&f, handle);
    let mut created = 0;
    let err = loop {
        match std::fs::File::create(upper.join(created.to_string())) {
            Ok(_) => created += 1,
            Err(e) => break e,
        }
        assert!(created < 10_000, "the inode limit never hit");
    };
    assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
    // 100 inodes: the upper dir and the files.
    assert_eq!(created + 1, 100);
    let used = f.disks.usage(handle).expect("usage");
    assert_eq!(used.exclusive_inodes_used, 100);
}

#[test]
fn without_limits_the_scratch_is_a_plain_directory_and_usage_walks_it() {
    let f = fixture();
    let handle = "plain";
    let _release = Released(&f, handle);
    f.disks
        .prepare_scratch(handle, &DiskLimits::default(), IMAGE)
        .expect("prepare");
    let scratch = f.layout.scratch_dir(handle);
    assert!(scratch.is_dir());
    assert!(!mounted(&scratch));
    assert!(!f.layout.scratch_image(handle).exists());
    let upper = upper(&f, handle);
    let (ok, err) = dd(&upper, "three", 3);
    assert!(ok, "{err}");
    let used = f.disks.usage(handle).expect("usage");
    assert!(used.exclusive_bytes_used >= 3 << 20, "{used:?}");
    assert!(
        used.exclusive_bytes_used < (3 << 20) + (64 << 10),
        "{used:?}"
    );
    assert_eq!(
        used.total_bytes_used,
        used.exclusive_bytes_used + IMAGE.bytes
    );
}

#[test]
fn image_usage_counts_the_layers() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bin"), vec![7u8; 1 << 20]).expect("write");
    let usage = f
        .disks
        .image_usage(&[dir.path().to_path_buf()])
        .expect("usage");
    assert_eq!(usage.inodes, 1);
    assert!(usage.bytes >= 1 << 20);
}

#[test]
fn capacity_is_the_depots_filesystem() {
    let f = fixture();
    let capacity = f.disks.capacity().expect("capacity");
    assert!(capacity.disk_in_bytes > 0);
    assert!(capacity.schedulable_disk_in_bytes > 0);
    assert!(capacity.schedulable_disk_in_bytes <= capacity.disk_in_bytes);
}
