//! Shared by the limits tests: a Linux-backend server with the busybox test rootfs, and
//! running a shell script in a container to completion.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use trellis_client::{Container, ProcessIo};
use trellis_core::api::ProcessSpec;
use trellis_tests::{Backend, TestServer};

/// The busybox rootfs (scripts/build-rootfs), shared with the other black-box tests.
pub fn rootfs() -> &'static Path {
    trellis_tests::images::busybox_rootfs()
}

pub fn linux_server() -> TestServer {
    let mut options = TestServer::options(Backend::Linux);
    options.default_rootfs = Some(rootfs().display().to_string());
    TestServer::start(options)
}

/// Runs `script` with `sh -c` as `user` (root when empty): (exit code, stdout, stderr).
pub async fn sh_as(container: &Container, user: &str, script: &str) -> (i32, String, String) {
    let (out, mut out_reader) = tokio::io::duplex(1 << 20);
    let (err, mut err_reader) = tokio::io::duplex(1 << 20);
    let mut process = container
        .run(
            ProcessSpec {
                path: "sh".into(),
                args: vec!["-c".into(), script.into()],
                user: user.into(),
                ..Default::default()
            },
            ProcessIo {
                stdout: Some(Box::new(out)),
                stderr: Some(Box::new(err)),
                ..Default::default()
            },
        )
        .await
        .expect("run");
    let code = process.wait().await.expect("wait");
    drop(process);
    let mut stdout = String::new();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut out_reader, &mut stdout)
        .await
        .expect("stdout");
    tokio::io::AsyncReadExt::read_to_string(&mut err_reader, &mut stderr)
        .await
        .expect("stderr");
    (code, stdout, stderr)
}

pub async fn sh(container: &Container, script: &str) -> (i32, String, String) {
    sh_as(container, "", script).await
}

/// Runs `script` as root and asserts it succeeds; returns stdout.
pub async fn ok(container: &Container, script: &str) -> String {
    let (code, out, err) = sh(container, script).await;
    assert_eq!(code, 0, "{script:?} failed: {out}{err}");
    out
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The host cgroup directories of the container: `<mount>/<server's parent>/<handle>` in every
/// cgroup hierarchy of the host (the container itself sees only its own cgroup namespace).
pub fn cgroup_dirs(server: &TestServer, container: &Container) -> Vec<PathBuf> {
    let parent = server.cgroup_parent();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            before.split_whitespace().nth(4).map(PathBuf::from)
        })
        .map(|mount| mount.join(&parent).join(container.handle()))
        .filter(|dir| dir.exists())
        .collect()
}
