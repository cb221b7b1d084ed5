//! The Linux host's containers end to end, driven through the `Host` trait (as root).

mod support;

use std::io::{Read, Write};
use std::time::Duration;
use support::*;
use trellis_core::api::{
    BindMount, BindMountMode, BindMountOrigin, ProcessSpec, ResourceLimits, Signal, TtySpec,
    WindowSize,
};
use trellis_os::{FilePath, Host, HostError};

#[test]
fn runs_a_process_in_its_own_namespaces() {
    let t = host("smoke");
    t.create("smoke-1");
    let (code, out, err) = t.run(
        "smoke-1",
        sh("echo hello; hostname; head -n1 /proc/1/status; echo oops >&2; exit 3"),
    );
    assert_eq!(code, 3, "stderr: {err}");
    assert_eq!(out, "hello\nsmoke-1\nName:\tgarden-init\n");
    assert_eq!(err, "oops\n");
    // Its own PID namespace: only init and this shell's ps.
    let ps = t.ok("smoke-1", "ps -o pid,comm");
    let others: Vec<&str> = ps
        .lines()
        .skip(1)
        .filter(|l| !l.ends_with(" sh") && !l.ends_with(" ps"))
        .collect();
    assert_eq!(
        others,
        vec!["    1 garden-init"],
        "unexpected processes: {ps}"
    );
    // The hostname of a long handle is its last 49 characters.
    let long = "a".repeat(20) + &"b".repeat(40);
    t.create(&long);
    assert_eq!(
        t.ok(&long, "hostname"),
        format!("{}\n", &long[long.len() - 49..])
    );
    t.destroy(&long);
    t.destroy("smoke-1");
}

#[test]
fn mounts_and_devices_are_those_of_a_garden_container() {
    let t = host("mounts");
    t.create("m");
    let mounts = t.ok("m", "cat /proc/mounts");
    for expected in [
        "tmpfs /dev/shm tmpfs rw,nosuid,nodev,noexec,relatime",
        "devpts /dev/pts devpts rw,nosuid,noexec,relatime,gid=5,mode=620,ptmxmode=666",
        "sysfs /sys sysfs ro,nosuid,nodev,noexec",
        "proc /proc proc rw,nosuid,nodev,noexec",
    ] {
        assert!(
            mounts.contains(expected),
            "{expected:?} missing from\n{mounts}"
        );
    }
    let devices = t.ok(
        "m",
        "for d in null zero full random urandom tty; do stat -c '%n %F %t:%T %a' /dev/$d; done; \
         for l in ptmx fd stdin stdout stderr; do readlink /dev/$l; done; stat -c %a /tmp",
    );
    assert_eq!(
        devices,
        "/dev/null character special file 1:3 666\n/dev/zero character special file 1:5 666\n\
         /dev/full character special file 1:7 666\n/dev/random character special file 1:8 666\n\
         /dev/urandom character special file 1:9 666\n/dev/tty character special file 5:0 666\n\
         pts/ptmx\n/proc/self/fd\n/proc/self/fd/0\n/proc/self/fd/1\n/proc/self/fd/2\n1777\n"
    );
    let (code, _, err) = t.run("m", sh("echo x > /sys/kernel/profiling"));
    assert_ne!(code, 0, "/sys must be read-only");
    assert!(err.contains("Read-only file system"), "{err}");
    // Only loopback, and it is up.
    assert!(t.ok("m", "cat /proc/net/dev").contains("lo:"));
    t.destroy("m");
}

#[test]
fn users_env_and_working_directories_follow_gdn() {
    let t = host("users");
    t.create("u");
    t.ok("u", "adduser -D alice && adduser -D bob");
    let (code, out, _) = t.run(
        "u",
        sh_as("alice", "id -u; id -g; id -G; pwd; echo $HOME $USER $PATH"),
    );
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "1001\n1001\n1001\n/home/alice\n/home/alice alice /usr/local/bin:/usr/bin:/bin\n"
    );
    let (_, out, _) = t.run("u", sh("id; pwd; echo $HOME $USER $PATH"));
    assert_eq!(
        out,
        "uid=0(root) gid=0(root) groups=10(wheel)\n/root\n/root root /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    let (_, out, _) = t.run("u", sh_as("1001:1002", "id -u; id -g; echo $USER"));
    assert_eq!(out, "1001\n1002\n1001:1002\n");
    let (_, out, _) = t.run("u", sh_as("vcap:staff", "id -u; id -g; id -G"));
    assert_eq!(out, "1000\n50\n50\n");

    // Env: image/container env, then the process's; last occurrence wins at its position.
    let spec = ProcessSpec {
        path: "env".into(),
        env: vec!["TEST=hello".into(), "FRUIT=banana".into()],
        ..Default::default()
    };
    let (_, out, _) = t.run_with_env("u", spec, &["CONTAINER_ENV=1".into(), "TEST=hi".into()]);
    assert!(
        out.contains("CONTAINER_ENV=1\nTEST=hello\nFRUIT=banana\n"),
        "{out}"
    );

    // A missing working dir is made, owned by the user, even under a parent it cannot write.
    t.ok(
        "u",
        "mkdir -p /home/alice/locked && chmod 0555 /home/alice/locked",
    );
    let spec = ProcessSpec {
        dir: "/home/alice/locked/deep/er".into(),
        ..sh_as("alice", "touch ok && pwd && stat -c %U:%a . ..")
    };
    let (code, out, err) = t.run("u", spec);
    assert_eq!(
        (code, out.as_str()),
        (0, "/home/alice/locked/deep/er\nalice:755\nalice:755\n"),
        "{err}"
    );

    // Errors with gdn's texts.
    let err = t
        .spawn("u", sh_as("batman", "true"), &[])
        .err()
        .expect("unknown user");
    assert!(
        err.to_string()
            .contains("unable to find user batman: no matching entries in passwd file"),
        "{err}"
    );
    let missing = ProcessSpec {
        path: "does-not-exist".into(),
        ..Default::default()
    };
    match t.spawn("u", missing, &[]) {
        Err(HostError::ExecutableNotFound(m)) => {
            assert!(m.contains("executable file not found in $PATH"), "{m}")
        }
        other => panic!("expected executable-not-found, got {:?}", other.err()),
    }
    // The lookup uses the process's own PATH.
    let spec = ProcessSpec {
        path: "hostname".into(),
        env: vec!["PATH=/nowhere".into()],
        ..Default::default()
    };
    assert!(matches!(
        t.spawn("u", spec, &[]),
        Err(HostError::ExecutableNotFound(_))
    ));

    // rlimits: soft = hard = the value.
    let spec = ProcessSpec {
        rlimits: ResourceLimits {
            nofile: Some(512),
            nproc: Some(4567),
            ..Default::default()
        },
        ..sh("ulimit -n; ulimit -Hn; ulimit -u")
    };
    assert_eq!(t.run("u", spec).1, "512\n512\n4567\n");
    t.destroy("u");
}

#[test]
fn stdin_exit_codes_and_signals() {
    let t = host("stdio");
    t.create("s");
    t.ok("s", "adduser -D alice");
    // stdin reaches the process, as a non-root user reopening /dev/stdin; EOF ends it.
    let mut p = t
        .spawn(
            "s",
            sh_as(
                "alice",
                "cat /dev/stdin; echo -n potato > /dev/stdout; echo -n err >/dev/stderr; exit 42",
            ),
            &[],
        )
        .unwrap();
    p.stdin
        .as_mut()
        .unwrap()
        .write_all(b"hello\nworld\n")
        .unwrap();
    p.close_stdin();
    let mut out = String::new();
    p.stdout.read_to_string(&mut out).unwrap();
    let mut err = String::new();
    p.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(
        (out.as_str(), err.as_str()),
        ("hello\nworld\npotato", "err")
    );
    assert_eq!(p.wait(), 42);
    assert_eq!(p.wait(), 42, "the status can be read again");
    // The keeper still knows it, with its status: attaching again gives it at once.
    let again = t.host.attach_process("s", &p.id).unwrap();
    assert!(again.stdin.is_none(), "stdin was closed");
    assert_eq!(trellis_os::ProcessIo::wait(again.exit), 42);
    t.host.release_process("s", &p.id).unwrap();
    assert!(matches!(
        t.host.attach_process("s", &p.id),
        Err(trellis_os::HostError::ProcessNotFound(_))
    ));

    // Signals: delivered by the host, right after the start; 128+n when they kill.
    for (signal, status) in [(Signal::Terminate, 143), (Signal::Kill, 137)] {
        let mut p = t
            .spawn("s", sh_as("alice", "while true; do sleep 1; done"), &[])
            .unwrap();
        p.signal(signal);
        assert_eq!(p.wait(), status);
    }
    let mut trapped = t
        .spawn(
            "s",
            sh("trap 'echo termed; exit 42' TERM; echo ready; while true; do sleep 0.1; done"),
            &[],
        )
        .unwrap();
    let mut ready = [0u8; 6];
    trapped.stdout.read_exact(&mut ready).unwrap();
    trapped.signal(Signal::Terminate);
    let mut rest = String::new();
    trapped.stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "termed\n");
    assert_eq!(trapped.wait(), 42);

    // Output is all there at exit, even from a quick process with lots of it.
    let (code, out, _) = t.run("s", sh("seq 1 100000"));
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 100000);
    assert!(out.ends_with("99999\n100000\n"));
    t.destroy("s");
}

#[test]
fn tty_with_window_size_onlcr_and_resize() {
    let t = host("tty");
    t.create("t");
    let tty = |size: Option<WindowSize>| Some(TtySpec { window_size: size });
    let spec = ProcessSpec {
        tty: tty(None),
        ..sh("stty size; echo -e 'new\\nline'; echo to-stderr >&2; tty")
    };
    let (code, out, err) = t.run("t", spec);
    assert_eq!(code, 0);
    assert_eq!(out, "24 80\r\nnew\r\nline\r\nto-stderr\r\n/dev/pts/0\r\n");
    assert_eq!(err, "", "stderr is merged into the tty");
    let spec = ProcessSpec {
        tty: tty(Some(WindowSize {
            columns: 123,
            rows: 456,
        })),
        ..sh("stty size")
    };
    assert_eq!(t.run("t", spec).1, "456 123\r\n");

    // Resize reaches the process (SIGWINCH); stdin goes through the pty.
    let spec = ProcessSpec {
        tty: tty(Some(WindowSize { columns: 13, rows: 46 })),
        ..sh("trap 'stty size' WINCH; stty size; until [ -n \"$line\" ]; do read line; done; echo got $line")
    };
    let mut p = t.spawn("t", spec, &[]).unwrap();
    let mut first = [0u8; 7];
    p.stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"46 13\r\n");
    p.resize(WindowSize {
        columns: 123,
        rows: 456,
    });
    let mut second = [0u8; 9];
    p.stdout.read_exact(&mut second).unwrap();
    assert_eq!(&second, b"456 123\r\n");
    p.stdin.as_mut().unwrap().write_all(b"ok\n").unwrap();
    let mut rest = String::new();
    p.stdout.read_to_string(&mut rest).unwrap();
    assert!(rest.ends_with("got ok\r\n"), "{rest:?}");
    assert_eq!(p.wait(), 0);
    // Every byte of a big tty output arrives before the end.
    let spec = ProcessSpec {
        tty: tty(None),
        ..sh("seq -s ' ' 10000")
    };
    assert!(t.run("t", spec).1.contains("9999 10000"));
    t.destroy("t");
}

#[test]
fn stop_terminates_every_process_but_init() {
    let t = host("stop");
    t.create("st");
    let mut parent = t
        .spawn("st", sh("trap 'exit 42' TERM; sh -c 'trap \"exit 7\" TERM; while true; do sleep 0.1; done' & while true; do sleep 0.1; done"), &[])
        .unwrap();
    eventually("the nested shell", Duration::from_secs(10), || {
        t.ok("st", "ps -o comm | grep -c sh || true")
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
            >= 3
    });
    t.host.stop_processes("st", false).unwrap();
    assert_eq!(parent.wait(), 42);
    assert_eq!(
        t.ok("st", "ps -o comm | grep -c sleep || true").trim(),
        "0",
        "no process survives"
    );
    // Kill: no TERM grace, and the container keeps working (init stays).
    let mut stubborn = t
        .spawn(
            "st",
            sh("trap '' TERM; while true; do sleep 0.1; done"),
            &[],
        )
        .unwrap();
    t.host.stop_processes("st", true).unwrap();
    assert_eq!(stubborn.wait(), 137);
    assert_eq!(t.ok("st", "echo alive"), "alive\n");
    t.destroy("st");
}

/// A Stop still ends the processes of a container whose init an older binary started (the
/// server was upgraded under it): such an init hangs up on the wait it does not know. Here a
/// stand-in at init's socket passes every other request on to the real init.
#[test]
fn stop_works_with_an_init_that_does_not_know_the_wait() {
    use nix::sys::socket::{
        accept, bind, connect, listen, recv, send, socket, AddressFamily, Backlog, MsgFlags,
        SockFlag, SockType, UnixAddr,
    };
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let t = host("stopold");
    t.create("so");
    let mut parent = t
        .spawn(
            "so",
            sh("trap 'exit 42' TERM; while true; do sleep 0.1; done"),
            &[],
        )
        .unwrap();
    let socket_path = t.host.layout.init_socket("so");
    let real = socket_path.with_file_name("real-init.sock");
    std::fs::rename(&socket_path, &real).unwrap();
    let seqpacket = || {
        socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket")
    };
    let listener = seqpacket();
    bind(listener.as_raw_fd(), &UnixAddr::new(&socket_path).unwrap()).unwrap();
    listen(&listener, Backlog::new(16).unwrap()).unwrap();
    let waits_refused = Arc::new(AtomicUsize::new(0));
    let refused = waits_refused.clone();
    let real_address = UnixAddr::new(&real).unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(conn) = accept(&listener) {
            let Ok(n) = recv(conn.as_raw_fd(), &mut buf, MsgFlags::empty()) else {
                continue;
            };
            if String::from_utf8_lossy(&buf[..n]).contains("AwaitNoProcesses") {
                refused.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            let upstream = seqpacket();
            connect(upstream.as_raw_fd(), &real_address).expect("connect to init");
            send(upstream.as_raw_fd(), &buf[..n], MsgFlags::empty()).expect("to init");
            let m = recv(upstream.as_raw_fd(), &mut buf, MsgFlags::empty()).expect("from init");
            let _ = send(conn.as_raw_fd(), &buf[..m], MsgFlags::empty());
        }
    });

    t.host.stop_processes("so", false).unwrap();
    assert_eq!(parent.wait(), 42);
    assert!(
        waits_refused.load(Ordering::SeqCst) >= 1,
        "the wait was tried"
    );

    std::fs::remove_file(&socket_path).unwrap();
    std::fs::rename(&real, &socket_path).unwrap();
    assert_eq!(t.ok("so", "echo alive"), "alive\n");
    t.destroy("so");
}

/// A process of its own image (a pea): its parent is its keeper, not the container's init.
fn pea(script: &str) -> ProcessSpec {
    ProcessSpec {
        image: trellis_core::api::ImageRef {
            uri: rootfs_tar().to_string_lossy().into_owned(),
            ..Default::default()
        },
        ..sh(script)
    }
}

#[test]
fn a_wait_for_no_processes_ends_with_the_last_one_or_at_its_timeout() {
    let t = host("await");
    t.create("aw");
    let runtime = &t.host.runtime;
    // Without a deadline: a wait that missed the last exit would never end.
    let forever = Duration::MAX;
    assert_eq!(runtime.await_no_processes("aw", forever).unwrap(), 0);

    // An orphan that init adopts, and a pea's process (whose exit init hears of from the
    // pea's keeper), the last to end.
    let mut orphaning = t.spawn("aw", sh("sleep 1 & exit 0"), &[]).unwrap();
    let mut last = t.spawn("aw", pea("sleep 2; exit 5"), &[]).unwrap();
    assert_eq!(orphaning.wait(), 0);
    assert_eq!(runtime.await_no_processes("aw", forever).unwrap(), 0);
    assert_eq!(last.wait(), 5);

    // Processes that never end: the count once the timeout has passed (the pea's keeper is
    // not counted).
    let mut sleeping = t.spawn("aw", sh("exec sleep 1000"), &[]).unwrap();
    let mut sleeping_pea = t.spawn("aw", pea("exec sleep 1000"), &[]).unwrap();
    assert_eq!(
        runtime
            .await_no_processes("aw", Duration::from_millis(100))
            .unwrap(),
        2
    );
    t.host.stop_processes("aw", true).unwrap();
    assert_eq!((sleeping.wait(), sleeping_pea.wait()), (137, 137));
    t.destroy("aw");
}

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn names_in(tar_bytes: &[u8]) -> Vec<String> {
    tar::Archive::new(tar_bytes)
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            String::from_utf8_lossy(&e.path_bytes()).into_owned()
        })
        .collect()
}

#[test]
fn streams_files_in_and_out_as_the_user() {
    let t = host("files");
    t.create("f");
    t.ok("f", "adduser -D alice && adduser -D bob");
    let at = |path: &'static str, user: &'static str| FilePath {
        handle: "f",
        path,
        user,
    };
    let archive = tar_of(&[("dir/file.txt", b"hello")]);
    t.host
        .stream_in(at("/home/alice", "alice"), &mut archive.as_slice())
        .unwrap();
    assert_eq!(
        t.ok(
            "f",
            "cat /home/alice/dir/file.txt; stat -c %U /home/alice/dir/file.txt"
        ),
        "helloalice\n"
    );
    // Relative paths are relative to the user's home; root by default.
    t.host
        .stream_in(at("rel", "alice"), &mut archive.as_slice())
        .unwrap();
    t.ok("f", "test -f /home/alice/rel/dir/file.txt");
    t.host
        .stream_in(at("/", ""), &mut archive.as_slice())
        .unwrap();
    assert_eq!(t.ok("f", "stat -c %U /dir/file.txt"), "root\n");

    let err = t
        .host
        .stream_in(at("/home/alice", "bob"), &mut archive.as_slice())
        .unwrap_err();
    assert!(err.to_string().contains("Permission denied"), "{err}");
    let err = t
        .host
        .stream_in(at("/tmp", "batman"), &mut archive.as_slice())
        .unwrap_err();
    assert!(err.to_string().contains("error streaming in"), "{err}");
    let err = t
        .host
        .stream_in(at("/tmp", "alice"), &mut &archive[..10])
        .unwrap_err();
    assert!(!err.to_string().is_empty());

    t.ok(
        "f",
        "mkdir -p /home/alice/outer/inner && echo x > /home/alice/outer/inner/some-file",
    );
    let mut out = Vec::new();
    t.host
        .stream_out(at("/home/alice/outer/inner", "alice"), &mut out)
        .unwrap();
    assert_eq!(names_in(&out), vec!["inner/", "inner/some-file"]);
    let mut out = Vec::new();
    t.host
        .stream_out(at("outer/inner/", "alice"), &mut out)
        .unwrap();
    assert_eq!(names_in(&out), vec!["./", "./some-file"]);
    let mut out = Vec::new();
    let err = t
        .host
        .stream_out(at("/root", "alice"), &mut out)
        .unwrap_err();
    assert!(err.to_string().contains("Permission denied"), "{err}");
    t.destroy("f");
}

#[test]
fn file_streams_never_leave_the_container() {
    let t = host("escape");
    let host_marker = t.base.join("host-secret");
    std::fs::create_dir_all(&t.base).unwrap();
    std::fs::write(&host_marker, "host only").unwrap();
    t.create("e");
    let marker = host_marker.to_string_lossy().into_owned();
    // Absolute symlinks and chains in the rootfs point into the container, never the host.
    t.ok("e", &format!(
        "mkdir -p $(dirname {marker}) && echo container > {marker} && ln -s {base} /link && ln -s /link /chain && ln -s ../../../../../.. /up",
        base = t.base.display()
    ));
    let mut out = Vec::new();
    t.host
        .stream_out(
            FilePath {
                handle: "e",
                path: "/chain/host-secret",
                user: "",
            },
            &mut out,
        )
        .unwrap();
    let mut archive = tar::Archive::new(out.as_slice());
    let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
    let mut body = String::new();
    entry.read_to_string(&mut body).unwrap();
    assert_eq!(body, "container\n");

    // Writing through them, or with `..` in the archive, stays inside too.
    let evil = tar_of(&[("pwned", b"x")]);
    t.host
        .stream_in(
            FilePath {
                handle: "e",
                path: "/up/tmp",
                user: "",
            },
            &mut evil.as_slice(),
        )
        .unwrap();
    t.ok("e", "test -f /tmp/pwned");
    let mut raw = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.as_old_mut().name[..14].copy_from_slice(b"../../../../x1");
    header.set_cksum();
    raw.append(&header, &b"x"[..]).unwrap();
    let evil = raw.into_inner().unwrap();
    let _ = t.host.stream_in(
        FilePath {
            handle: "e",
            path: "/tmp/a/b",
            user: "",
        },
        &mut evil.as_slice(),
    );
    assert_eq!(std::fs::read_to_string(&host_marker).unwrap(), "host only");
    assert!(!std::path::Path::new("/x1").exists());
    assert!(!t.base.join("pwned").exists());
    t.destroy("e");
}

#[test]
fn bind_mounts_read_only_read_write_and_from_the_container() {
    let t = host("binds");
    let ro = t.base.join("ro");
    let rw = t.base.join("rw");
    let host_root = t.base.join("host-root");
    for dir in [&ro, &rw, &host_root] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(ro.join("file"), "from host").unwrap();
    // Container root of an unprivileged container is host uid 4294967294: it owns what that
    // uid owns on the host, and nothing of host root's.
    std::os::unix::fs::chown(&rw, Some(4294967294), Some(4294967294)).unwrap();
    let bind = |src: &std::path::Path, dst: &str, mode, origin| BindMount {
        src_path: src.to_string_lossy().into_owned(),
        dst_path: dst.into(),
        mode,
        origin,
    };
    t.host
        .prepare_rootfs("b", &Default::default(), false, &Default::default())
        .unwrap();
    t.host
        .create_cgroup("b", &Default::default(), false)
        .unwrap();
    t.host
        .start_init(
            "b",
            &init_config(
                "b",
                vec![
                    bind(
                        &ro,
                        "/mnt/ro",
                        BindMountMode::ReadOnly,
                        BindMountOrigin::Host,
                    ),
                    bind(
                        &rw,
                        "/mnt/rw",
                        BindMountMode::ReadWrite,
                        BindMountOrigin::Host,
                    ),
                    bind(
                        &host_root,
                        "/mnt/host-root",
                        BindMountMode::ReadWrite,
                        BindMountOrigin::Host,
                    ),
                    bind(
                        std::path::Path::new("/etc"),
                        "/mnt/etc",
                        BindMountMode::ReadOnly,
                        BindMountOrigin::Container,
                    ),
                ],
            ),
        )
        .unwrap();
    assert_eq!(t.ok("b", "cat /mnt/ro/file"), "from host");
    let (code, _, err) = t.run("b", sh("touch /mnt/ro/new"));
    assert_ne!(code, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    t.ok("b", "echo written > /mnt/rw/new");
    assert_eq!(
        std::fs::read_to_string(rw.join("new")).unwrap(),
        "written\n"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(rw.join("new")).unwrap().uid(), 4294967294);
    let (code, _, err) = t.run("b", sh("touch /mnt/host-root/new"));
    assert_ne!(code, 0, "container root wrote into a host root directory");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!host_root.join("new").exists());
    assert!(t.ok("b", "cat /mnt/etc/passwd").starts_with("root:x:0:0"));
    t.destroy("b");

    // A missing source is a clear error, and leaves no init behind.
    t.host
        .prepare_rootfs("m", &Default::default(), false, &Default::default())
        .unwrap();
    let missing = bind(
        &t.base.join("nope"),
        "/mnt/x",
        BindMountMode::ReadOnly,
        BindMountOrigin::Host,
    );
    let err = t
        .host
        .start_init("m", &init_config("m", vec![missing]))
        .unwrap_err();
    assert!(matches!(err, HostError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    let missing = bind(
        std::path::Path::new("/nope"),
        "/mnt/x",
        BindMountMode::ReadOnly,
        BindMountOrigin::Container,
    );
    let err = t
        .host
        .start_init("m", &init_config("m", vec![missing]))
        .unwrap_err();
    assert!(err.to_string().contains("/nope"), "{err}");
    assert!(!t.host.runtime.init_running("m"));
    t.host.remove_rootfs("m").unwrap();
}

#[test]
fn the_source_rootfs_is_never_modified_and_destroy_removes_the_upper() {
    let t = host("cow");
    t.create("c1");
    t.ok("c1", "echo changed > /etc/motd && rm /bin/kill");
    assert!(!rootfs().join("etc/motd").exists());
    assert!(rootfs().join("bin/kill").symlink_metadata().is_ok());
    t.create("c2");
    t.ok("c2", "test -e /bin/kill && test ! -e /etc/motd");
    let upper = t.host.layout.overlay_upper_dir("c1");
    assert!(upper.join("etc/motd").exists());
    t.destroy("c1");
    assert!(!t.host.layout.container_dir("c1").exists());
    t.destroy("c2");

    // A tar rootfs is unpacked once and shared.
    let tar_uri = rootfs_tar().to_string_lossy().into_owned();
    t.create_with("t1", &tar_uri, vec![]);
    t.create_with("t2", &tar_uri, vec![]);
    assert_eq!(t.ok("t1", "cat /etc/group | head -n1"), "root:x:0:\n");
    let unpacked = std::fs::read_dir(t.host.layout.images_dir().join("tar"))
        .unwrap()
        .count();
    assert_eq!(unpacked, 1);
    t.destroy("t1");
    t.destroy("t2");
}

#[test]
fn containers_outlive_the_host_object_and_are_observed_again() {
    let t = host("restart");
    t.create("r");
    let mut sleeper = t.spawn("r", sh("sleep 1000"), &[]).unwrap();
    let config = trellis_os::LinuxConfig {
        cgroup: Default::default(),
        layout: t.host.layout.clone(),
        default_rootfs: String::new(),
        helper_binary: Some(env!("CARGO_BIN_EXE_trellis-os-helper").into()),
        network: t.host.network.settings().clone(),
        security: Default::default(),
        registry: Default::default(),
        image_plugins: Default::default(),
    };
    // A second host on the same layout (as after a server restart) finds everything.
    let again = trellis_os::LinuxHost::new(config).unwrap();
    let observed = again.observe().unwrap();
    let c = &observed.containers["r"];
    assert!(c.rootfs && c.cgroup && c.init, "{c:?}");
    assert_eq!(c.processes, vec![sleeper.id.clone()]);
    let (code, out, _) = {
        let io = again
            .spawn_process(trellis_os::SpawnRequest {
                handle: "r",
                process_id: "q",
                spec: &sh("echo still here"),
                env: &[],
            })
            .unwrap();
        let mut p = Proc::new(&again, "r", "q", io);
        let mut out = String::new();
        p.stdout.read_to_string(&mut out).unwrap();
        (p.wait(), out, ())
    };
    assert_eq!((code, out.as_str()), (0, "still here\n"));
    again.kill_container("r").unwrap();
    assert_eq!(sleeper.wait(), 137);
    assert!(!again.observe().unwrap().containers["r"].init);
    t.destroy("r");
}
