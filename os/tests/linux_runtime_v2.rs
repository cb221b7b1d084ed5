//! Container starts on cgroup v2 (as root), whatever the host's mode: the v2 backend at the
//! host's cgroup2 mount (on a hybrid host, /sys/fs/cgroup/unified, where the controllers stay
//! bound to v1, so these containers have default limits). The zygote forks each start's
//! helper straight into the container's cgroup (`clone3` with `CLONE_INTO_CGROUP`); where the
//! kernel refuses clone3, the server moves it there. Either way the container's init and a
//! pea's keeper start in the container's cgroup, and nothing is left once it is destroyed.

mod common;
mod support;

use common::{cgroup2_root, unique_parent, v2_cgroup_of, ParentGuard};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::ForkResult;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use support::{host, images, sh, TestHost};
use trellis_core::api::{ImageRef, Limits, ProcessSpec};
use trellis_os::linux::cgroup::{CgroupOptions, Cgroups, Mode};
use trellis_os::linux::peas;
use trellis_os::linux::runtime::zygote::fork_into_cgroup;

/// V2 cgroups at the cgroup2 mount, and their parent's directory.
fn v2_cgroups(test: &str) -> (Cgroups, PathBuf) {
    let parent = unique_parent(test);
    let mut options = CgroupOptions::new(&parent);
    options.mode = Some(Mode::V2);
    options.v2_root = cgroup2_root();
    let cgroups = Cgroups::with_options(options).expect("v2 cgroups");
    (cgroups, cgroup2_root().join(parent))
}

/// A test host whose containers get v2 cgroups at the cgroup2 mount (under the directory
/// returned).
fn v2_host(test: &str) -> (TestHost, PathBuf) {
    let mut t = host(test);
    let (cgroups, parent) = v2_cgroups(test);
    t.host.cgroups = cgroups;
    (t, parent)
}

fn is_running(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Creates `handle`, checks that its init starts in its v2 cgroup (and that a process it
/// runs sees that cgroup as its root), destroys it and checks that nothing of it is left.
fn starts_in_its_cgroup_and_leaves_nothing(t: &TestHost, parent: &Path, handle: &str) {
    t.create(handle);
    let dir = parent.join(handle);
    let init = t.host.runtime.init_pid(handle).expect("init runs");
    assert_eq!(v2_cgroup_of(init as u32), Some(dir.clone()));
    let own = t.ok(handle, "grep '^0::' /proc/self/cgroup");
    assert_eq!(
        own, "0::/\n",
        "a process sees its container's cgroup as its root"
    );

    t.destroy(handle);
    assert!(!dir.exists(), "{} is left", dir.display());
    assert!(!is_running(init), "init {init} is left");
    assert!(t.host.runtime.init_pid(handle).is_none());
}

#[test]
fn an_init_and_a_peas_keeper_start_in_the_containers_v2_cgroup() {
    let (t, parent) = v2_host("v2start");
    assert_eq!(t.host.cgroups.mode(), Mode::V2);
    starts_in_its_cgroup_and_leaves_nothing(&t, &parent, "v2-init");

    // A pea without limits of its own shares its container's cgroup.
    let handle = "v2-pea";
    t.create(handle);
    let pea = ProcessSpec {
        image: ImageRef {
            uri: images::busybox_tar().display().to_string(),
            ..Default::default()
        },
        ..sh("cat >/dev/null")
    };
    let mut process = t.spawn(handle, pea, &[]).expect("spawn a pea");
    let key = peas::key(handle, &process.id);
    let keeper = t
        .host
        .runtime
        .init_pid(&key)
        .expect("the pea's keeper runs");
    let dir = parent.join(handle);
    assert_eq!(v2_cgroup_of(keeper as u32), Some(dir.clone()));
    process.close_stdin();
    assert_eq!(process.wait(), 0);

    t.destroy(handle);
    assert!(!dir.exists(), "{} is left", dir.display());
    assert!(!is_running(keeper), "the keeper {keeper} is left");
}

#[test]
fn without_clone3_the_server_moves_the_helper_into_the_v2_cgroup() {
    let (t, parent) = v2_host("v2noclone3");
    // The zygote starts with the first container, from the thread that creates it, and
    // inherits that thread's seccomp filter: one that answers clone3 as a kernel before 5.3.
    std::thread::scope(|s| {
        s.spawn(|| {
            refuse_clone3_in_this_thread();
            // SAFETY: clone3 with no arguments only reads them (and fails).
            let answer = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) };
            assert_eq!((answer, Errno::last()), (-1, Errno::ENOSYS));
            starts_in_its_cgroup_and_leaves_nothing(&t, &parent, "v2-fallback");
            // The zygote now forks plainly at once (it remembers the kernel's answer).
            starts_in_its_cgroup_and_leaves_nothing(&t, &parent, "v2-fallback-2");
        })
        .join()
        .expect("the container starts without clone3");
    });
}

/// Installs a seccomp filter on the calling thread (and what it starts from now on) under
/// which clone3 fails with ENOSYS.
fn refuse_clone3_in_this_thread() {
    use libseccomp::{ScmpAction, ScmpFilterContext, ScmpSyscall};
    let mut filter = ScmpFilterContext::new(ScmpAction::Allow).expect("seccomp filter");
    // As root the filter needs no no_new_privs, which would change the containers' setuid.
    filter.set_ctl_nnp(false).expect("no no_new_privs");
    filter
        .add_rule(
            ScmpAction::Errno(libc::ENOSYS),
            ScmpSyscall::from_name("clone3").expect("clone3"),
        )
        .expect("rule");
    filter.load().expect("load the filter");
}

#[test]
fn fork_into_cgroup_starts_the_child_in_that_cgroup() {
    let (cgroups, parent) = v2_cgroups("v2forkinto");
    let _guard = ParentGuard(&cgroups);
    cgroups
        .create("forked", &Limits::default(), false)
        .expect("create");
    let target = cgroups
        .fork_target("forked")
        .expect("open the cgroup")
        .expect("a v2 cgroup is a fork target");
    // SAFETY: the child (of this multi-threaded test) calls only pause (async-signal-safe)
    // until it is killed.
    match unsafe { fork_into_cgroup(target.as_fd()) }.expect("clone3(CLONE_INTO_CGROUP)") {
        ForkResult::Child => loop {
            // SAFETY: waits for a signal.
            unsafe { libc::pause() };
        },
        ForkResult::Parent { child } => {
            let placed = v2_cgroup_of(child.as_raw() as u32);
            kill(child, Signal::SIGKILL).expect("kill the child");
            let status = waitpid(child, None).expect("reap the child");
            assert_eq!(status, WaitStatus::Signaled(child, Signal::SIGKILL, false));
            assert_eq!(placed, Some(parent.join("forked")));
        }
    }
}
