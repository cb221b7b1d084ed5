//! Helpers for the cgroup tests: unique parents, the cgroup2 mount, processes started inside a
//! cgroup, waiting on conditions with a deadline.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use trellis_os::linux::cgroup::Cgroups;

/// A parent name no server and no other test uses.
pub fn unique_parent(test: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "trellis-test-{}-{}-{}",
        std::process::id(),
        test,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The first cgroup2 mount in /proc/self/mountinfo.
pub fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            if after.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            before.split_whitespace().nth(4).map(PathBuf::from)
        })
        .expect("a cgroup2 mount (hybrid hosts have one at /sys/fs/cgroup/unified)")
}

/// The cgroup2 directory of process `pid` (its `0::` line), if it still runs.
pub fn v2_cgroup_of(pid: u32) -> Option<PathBuf> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::/"))?;
    Some(cgroup2_root().join(path))
}

/// Starts `argv` inside the container's cgroup before it runs anything: the shell waits for a
/// line on stdin, which is sent once the process has been moved.
pub fn spawn_in(cgroups: &Cgroups, handle: &str, argv: &[&str]) -> Child {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg("read _ && exec \"$@\"")
        .arg("sh")
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn workload");
    cgroups
        .add_process(handle, child.id())
        .expect("move the workload into the cgroup");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("release the workload");
    child
}

/// Runs `argv` in the cgroup to completion: (exit code, stdout, stderr).
pub fn run_in(cgroups: &Cgroups, handle: &str, argv: &[&str]) -> (Option<i32>, String, String) {
    let child = spawn_in(cgroups, handle, argv);
    let out = child.wait_with_output().expect("wait for workload");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A file that is deleted when the test ends, pass or fail.
pub struct TempPath(pub std::path::PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Removes the test's parent cgroup when the test ends, pass or fail.
pub struct ParentGuard<'a>(pub &'a Cgroups);

impl Drop for ParentGuard<'_> {
    fn drop(&mut self) {
        if let Ok(handles) = self.0.handles() {
            for handle in handles {
                let _ = self.0.remove(&handle);
            }
        }
        let _ = self.0.remove_parent();
    }
}
