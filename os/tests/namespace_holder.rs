//! The short-lived child that holds a new user namespace while its id maps are written must
//! never outlive the process that made it, nor keep that process's descriptors (as root).
//!
//! Found by the SIGKILL harness: a server killed while a holder lived left the holder paused
//! forever, with a copy of every server descriptor: the listening socket (so the restarted
//! server could not bind its port) and the zygote's socket (so the zygote never saw EOF).

use std::process::Command;
use std::time::{Duration, Instant};
use trellis_os::linux::security::userns::new_namespaces;
use trellis_os::linux::security::IdMapping;

/// Set in the child this test starts: make namespaces in a loop until killed.
const LOOP_ENV: &str = "TRELLIS_TEST_NAMESPACE_LOOP";

/// Live processes called `name` (a zombie holds nothing: no descriptor, no namespace; this
/// machine's PID 1 may take its time reaping the orphans it inherits).
fn processes_named(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
            comm == name && !rest.trim_start().starts_with(['Z', 'X'])
        })
        .collect()
}

#[test]
fn holders_die_with_their_maker() {
    if let Some(name) = std::env::var_os(LOOP_ENV) {
        // The child: a thread named for the parent to find (the holder inherits the name of
        // the thread that clones it), making namespaces with and without a network.
        let name = name.into_string().expect("a name");
        std::thread::Builder::new()
            .name(name)
            .spawn(|| loop {
                let mapping = IdMapping::default();
                let _ = new_namespaces(&mapping, true);
                let _ = new_namespaces(&mapping, false);
            })
            .expect("a thread")
            .join()
            .expect("the loop never ends");
        return;
    }
    let name = format!("nshold{}", std::process::id() % 100_000);
    let mut leftovers = Vec::new();
    for _ in 0..20 {
        let mut child = Command::new(std::env::current_exe().expect("this test's path"))
            .args(["--exact", "holders_die_with_their_maker", "--nocapture"])
            .env(LOOP_ENV, &name)
            .spawn()
            .expect("the looping child");
        // Kill it mid-loop, most likely while a holder is alive.
        let deadline = Instant::now() + Duration::from_secs(5);
        while processes_named(&name).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(100));
        for pid in processes_named(&name) {
            leftovers.push(pid);
            // SAFETY: killing a process this test made (found by its unique name).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    assert!(
        leftovers.is_empty(),
        "holders outlived their maker: {leftovers:?}"
    );
}
