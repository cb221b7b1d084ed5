//! Real Linux containers over HTTP (as root): create and destroy, and processes: users, env,
//! working directory, stdin, exit codes, signals, tty, stop.

mod linux_support;

use linux_support::*;
use std::time::Duration;
use trellis_client::{Error, ProcessIo};
use trellis_core::api::{ContainerSpec, ProcessSpec, Signal, TtySpec, WindowSize};
use trellis_tests::eventually;

#[tokio::test(flavor = "multi_thread")]
async fn create_gives_a_running_container_and_destroy_removes_it() {
    let client = client();
    let container = client
        .create(ContainerSpec {
            handle: "lx-lifecycle".into(),
            env: vec!["FROM_CONTAINER=yes".into()],
            ..Default::default()
        })
        .await
        .expect("create");
    let info = container.info().await.expect("info");
    assert_eq!(info.state, "active");
    assert_eq!(
        info.container_path,
        server().depot().join("lx-lifecycle").display().to_string()
    );
    assert!(std::path::Path::new(&info.container_path).is_dir());
    // Every container has its own network: an address in the server's pool.
    assert!(!info.container_ip.is_empty(), "{info:?}");
    let out = ok(
        &container,
        "hostname; cat /proc/1/comm; echo $FROM_CONTAINER; ls /bin/busybox",
    )
    .await;
    assert_eq!(out, "lx-lifecycle\ngarden-init\nyes\n/bin/busybox\n");

    // Its processes see their own PID namespace: init is 1.
    let ps = ok(&container, "echo $$; cat /proc/1/cmdline | tr '\\0' ' '").await;
    assert!(ps.starts_with(|c: char| c.is_ascii_digit()), "{ps}");

    client.destroy("lx-lifecycle").await.expect("destroy");
    assert!(!std::path::Path::new(&info.container_path).exists());
    match client.container("lx-lifecycle").info().await {
        Err(Error::ContainerNotFound { handle }) => assert_eq!(handle, "lx-lifecycle"),
        other => panic!("expected ContainerNotFound, got {other:?}"),
    }
    match client.destroy("lx-lifecycle").await {
        Err(Error::ContainerNotFound { .. }) => {}
        other => panic!("a second destroy: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_handle_is_refused_and_the_first_container_survives() {
    let first = create(ContainerSpec {
        handle: "lx-dup".into(),
        ..Default::default()
    })
    .await;
    let err = client()
        .create(ContainerSpec {
            handle: "lx-dup".into(),
            ..Default::default()
        })
        .await
        .expect_err("a duplicate handle");
    assert!(err.to_string().contains("already in use"), "{err}");
    assert_eq!(ok(&first, "echo alive").await, "alive\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_and_output_reach_the_client() {
    let c = create_default().await;
    for code in [0, 1, 42, 255] {
        let out = run(&c, sh(&format!("echo out; echo err >&2; exit {code}"))).await;
        assert_eq!(
            (out.status, out.stdout.as_str(), out.stderr.as_str()),
            (code, "out\n", "err\n")
        );
    }
    // Killed by a signal: 128 + N.
    let out = run(&c, sh("kill -9 $$")).await;
    assert_eq!(out.status, 137);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_executable_is_an_executable_not_found_error() {
    let c = create_default().await;
    let err = run_with(
        &c,
        ProcessSpec {
            path: "/no/such/binary".into(),
            ..Default::default()
        },
        None,
    )
    .await
    .expect_err("a missing executable");
    assert!(matches!(err, Error::ExecutableNotFound { .. }), "{err:?}");
    let err = run_with(
        &c,
        ProcessSpec {
            path: "nope-not-on-path".into(),
            ..Default::default()
        },
        None,
    )
    .await
    .expect_err("not on PATH");
    assert!(matches!(err, Error::ExecutableNotFound { .. }), "{err:?}");
    // The container is unharmed.
    assert_eq!(ok(&c, "echo fine").await, "fine\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn users_by_name_uid_and_group_with_their_homes_and_paths() {
    let c = create_default().await;
    let cases = [
        ("", "0 0 0 10 /root root"),
        ("root", "0 0 0 10 /root root"),
        ("vcap", "1000 1000 1000 /home/vcap vcap"),
        ("1000", "1000 1000 1000 /home/vcap 1000"),
        ("1000:50", "1000 50 50 /home/vcap 1000:50"),
        ("vcap:staff", "1000 50 50 /home/vcap vcap:staff"),
        // A uid without a passwd entry: gid 0, home /.
        ("4242", "4242 0 0 / 4242"),
    ];
    for (user, expected) in cases {
        let out = run(
            &c,
            sh_as(user, "echo $(id -u) $(id -g) $(id -G) $HOME $USER"),
        )
        .await;
        assert_eq!(
            (out.status, out.stdout.trim()),
            (0, expected),
            "user {user:?}: {out:?}"
        );
        // The working directory defaults to the user's home.
        let pwd = run(&c, sh_as(user, "pwd")).await;
        let home = expected
            .split(' ')
            .nth(expected.split(' ').count() - 2)
            .unwrap();
        assert_eq!(pwd.stdout.trim(), home, "user {user:?}");
    }
    // PATH follows the resolved uid.
    assert_eq!(
        ok(&c, "echo $PATH").await.trim(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    let out = run(&c, sh_as("vcap", "echo $PATH")).await;
    assert_eq!(out.stdout.trim(), "/usr/local/bin:/usr/bin:/bin");
    // A user added inside the container can run processes.
    ok(&c, "adduser -D alice").await;
    let out = run(
        &c,
        sh_as(
            "alice",
            "whoami; echo $HOME; touch ~/mine && ls -ln ~/mine | awk '{print $3}'",
        ),
    )
    .await;
    assert_eq!(out.stdout, "alice\n/home/alice\n1001\n", "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_users_and_groups_are_clear_errors() {
    let c = create_default().await;
    for (user, message) in [
        ("nobody-here", "unable to find user nobody-here"),
        ("vcap:no-group", "unable to find group no-group"),
        ("99999999999", "uids and gids must be in range"),
    ] {
        let err = run_with(&c, sh_as(user, "true"), None)
            .await
            .expect_err(user);
        assert!(err.to_string().contains(message), "{user}: {err}");
        assert_eq!(err.status(), Some(500), "{user}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_is_container_then_process_with_defaults() {
    let c = create(ContainerSpec {
        env: vec!["A=container".into(), "B=container".into()],
        ..Default::default()
    })
    .await;
    let out = run(
        &c,
        ProcessSpec {
            env: vec![
                "B=process".into(),
                "C=process".into(),
                "HOME=/elsewhere".into(),
            ],
            ..sh("echo $A $B $C $HOME $USER")
        },
    )
    .await;
    assert_eq!(out.stdout, "container process process /elsewhere root\n");
    // Only the documented variables are added.
    let env = ok(&c, "env | cut -d= -f1 | sort | tr '\\n' ' '").await;
    assert_eq!(env.trim(), "A B HOME PATH PWD SHLVL USER");
    // A process PATH replaces the default and is used to find the executable.
    let out = run_with(
        &c,
        ProcessSpec {
            path: "busybox-only".into(),
            env: vec!["PATH=/nowhere".into()],
            ..Default::default()
        },
        None,
    )
    .await;
    assert!(
        matches!(out, Err(Error::ExecutableNotFound { .. })),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn working_directories_are_made_for_the_user() {
    let c = create_default().await;
    let out = run(
        &c,
        ProcessSpec {
            dir: "/made/for/vcap".into(),
            user: "vcap".into(),
            ..sh("pwd; touch here && echo wrote")
        },
    )
    .await;
    assert_eq!(out.stdout, "/made/for/vcap\nwrote\n", "{out:?}");
    let owner = ok(&c, "stat -c '%u:%g %a' /made/for/vcap /made/for /made").await;
    assert_eq!(owner, "1000:1000 755\n1000:1000 755\n1000:1000 755\n");
    // An existing directory is left as it is.
    let out = run(
        &c,
        ProcessSpec {
            dir: "/tmp".into(),
            user: "vcap".into(),
            ..sh("pwd")
        },
    )
    .await;
    assert_eq!(out.stdout, "/tmp\n");
    assert_eq!(ok(&c, "stat -c '%u %a' /tmp").await, "0 1777\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_reaches_the_process_and_closes() {
    let c = create_default().await;
    // Text: Garden carries stdin in JSON strings, so bytes that are not UTF-8 cannot pass.
    let data: Vec<u8> = (0..800_000u32)
        .map(|i| {
            if i % 61 == 60 {
                b'\n'
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect();
    let out = run_with(&c, sh("wc -c; md5sum"), Some(data.clone()))
        .await
        .expect("run");
    let md5 = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &data)?;
            child.wait_with_output()
        })
        .expect("md5sum on the host");
    // `wc` consumes everything, so md5sum sees nothing: the sum of the empty input.
    assert_eq!(
        out.stdout,
        format!("{}\nd41d8cd98f00b204e9800998ecf8427e  -\n", data.len())
    );
    let out = run_with(&c, sh("md5sum"), Some(data.clone()))
        .await
        .expect("run");
    assert_eq!(out.stdout.as_bytes(), &md5.stdout[..]);
    let out = run_with(&c, sh("cat"), Some(b"line one\nline two\n".to_vec()))
        .await
        .expect("run");
    assert_eq!(out.stdout, "line one\nline two\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn signals_terminate_and_kill_a_process() {
    let c = create_default().await;
    for (signal, script, expected) in [
        (
            Signal::Terminate,
            "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.05; done",
            3,
        ),
        (
            Signal::Kill,
            "trap '' TERM; echo ready; while true; do sleep 0.05; done",
            137,
        ),
        (Signal::Terminate, "echo ready; exec sleep 1000", 143),
    ] {
        let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
        let mut process = c
            .run(
                sh(script),
                ProcessIo {
                    stdout: Some(Box::new(out_w)),
                    ..Default::default()
                },
            )
            .await
            .expect("run");
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while !String::from_utf8_lossy(&seen).contains("ready") {
            let n = tokio::io::AsyncReadExt::read(&mut out_r, &mut buf)
                .await
                .expect("output");
            assert!(n > 0, "the process ended before it was ready");
            seen.extend_from_slice(&buf[..n]);
        }
        process.signal(signal).await.expect("signal");
        let status = tokio::time::timeout(Duration::from_secs(30), process.wait())
            .await
            .expect("the process to end after the signal")
            .expect("an exit status");
        assert_eq!(status, expected, "{script}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tty_has_its_window_size_and_merges_output() {
    let c = create_default().await;
    let spec = ProcessSpec {
        tty: Some(TtySpec {
            window_size: Some(WindowSize {
                columns: 123,
                rows: 45,
            }),
        }),
        ..sh("tty; stty size; echo to-stderr >&2; test -t 0 && echo stdin-is-a-tty")
    };
    let out = run_with(&c, spec, None).await.expect("run");
    assert_eq!(out.status, 0);
    assert_eq!(
        out.stdout, "/dev/pts/0\r\n45 123\r\nto-stderr\r\nstdin-is-a-tty\r\n",
        "{out:?}"
    );
    assert_eq!(out.stderr, "");

    // A resize reaches the running process.
    let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
    let (in_w, in_r) = tokio::io::duplex(1 << 16);
    let mut process = c
        .run(
            ProcessSpec {
                tty: Some(TtySpec::default()),
                ..sh("stty size; read line; stty size")
            },
            ProcessIo {
                stdin: Some(Box::new(in_r)),
                stdout: Some(Box::new(out_w)),
                ..Default::default()
            },
        )
        .await
        .expect("run");
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("24 80\r\n") {
        let n = tokio::io::AsyncReadExt::read(&mut out_r, &mut buf)
            .await
            .expect("output");
        assert!(n > 0, "no default size: {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    process
        .set_tty(TtySpec {
            window_size: Some(WindowSize {
                columns: 100,
                rows: 30,
            }),
        })
        .await
        .expect("resize");
    let mut in_w = in_w;
    tokio::io::AsyncWriteExt::write_all(&mut in_w, b"go\n")
        .await
        .expect("stdin");
    assert_eq!(process.wait().await.expect("exit"), 0);
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut out_r, &mut rest)
        .await
        .expect("output");
    seen.push_str(&rest);
    assert!(seen.ends_with("30 100\r\n"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_ends_every_process_but_keeps_the_container() {
    let c = create_default().await;
    let mut processes = Vec::new();
    for _ in 0..3 {
        processes.push(
            c.run(sh("exec sleep 1000"), ProcessIo::default())
                .await
                .expect("run"),
        );
    }
    let (ready_w, mut ready_r) = tokio::io::duplex(1024);
    let stubborn = c
        .run(
            sh("trap '' TERM; echo ready; while true; do sleep 0.05; done"),
            ProcessIo {
                stdout: Some(Box::new(ready_w)),
                ..Default::default()
            },
        )
        .await
        .expect("run");
    // Stop only once the shell ignores TERM (it may not have run `trap` yet otherwise).
    let mut ready = [0u8; 6];
    tokio::io::AsyncReadExt::read_exact(&mut ready_r, &mut ready)
        .await
        .expect("the stubborn process is ready");
    assert_eq!(&ready, b"ready\n");
    c.stop(false).await.expect("stop");
    for mut p in processes {
        assert_eq!(p.wait().await.expect("exit"), 143);
    }
    let mut stubborn = stubborn;
    // SIGTERM is ignored, so stop turns to SIGKILL.
    assert_eq!(stubborn.wait().await.expect("exit"), 137);
    assert_eq!(c.info().await.expect("info").state, "stopped");
    // A stopped container still runs new processes (as gdn's does).
    assert_eq!(ok(&c, "echo after-stop").await, "after-stop\n");

    let mut p = c
        .run(sh("exec sleep 1000"), ProcessIo::default())
        .await
        .expect("run");
    c.stop(true).await.expect("stop with kill");
    assert_eq!(p.wait().await.expect("exit"), 137);
}

#[tokio::test(flavor = "multi_thread")]
async fn processes_can_be_attached_to_by_id() {
    let c = create_default().await;
    let mut first = c
        .run(
            ProcessSpec {
                id: "lx-attach-me".into(),
                ..sh("read x; echo got $x; exit 7")
            },
            ProcessIo {
                stdin: Some(Box::new(std::io::Cursor::new(b"hello\n".to_vec()))),
                ..Default::default()
            },
        )
        .await
        .expect("run");
    assert_eq!(first.id(), "lx-attach-me");
    let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
    let mut attached = c
        .attach(
            "lx-attach-me",
            ProcessIo {
                stdout: Some(Box::new(out_w)),
                ..Default::default()
            },
        )
        .await
        .expect("attach");
    assert_eq!(attached.wait().await.expect("exit"), 7);
    assert_eq!(first.wait().await.expect("exit"), 7);
    drop(attached);
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut out_r, &mut text)
        .await
        .expect("output");
    // Output before the attach is not replayed; what it saw is a suffix of the output.
    assert!("got hello\n".ends_with(&text), "{text:?}");
    match c.attach("lx-no-such-process", ProcessIo::default()).await {
        Err(Error::ProcessNotFound { process_id }) => assert_eq!(process_id, "lx-no-such-process"),
        other => panic!("{:?}", other.map(|p| p.id().to_string())),
    }
}

/// Collects everything written to it, for a process's stdout or stderr.
fn collector() -> (
    Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    tokio::task::JoinHandle<String>,
) {
    let (w, mut r) = tokio::io::duplex(1 << 16);
    let read = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut r, &mut text).await;
        text
    });
    (Box::new(w), read)
}

/// GATS 'all attached clients should get stdout and stderr': output a process writes after a
/// pause longer than the server's linger time, right before it exits, reaches every client.
#[tokio::test(flavor = "multi_thread")]
async fn every_attached_client_gets_output_written_after_a_pause() {
    let c = create_default().await;
    let expected: String = (1..=10).map(|i| format!("{i}\n")).collect();
    let mut runs = Vec::new();
    for n in 0..3 {
        let id = format!("lx-fan-out-{n}");
        let (run_out, run_out_text) = collector();
        let (run_err, run_err_text) = collector();
        let mut run = c
            .run(
                ProcessSpec {
                    id: id.clone(),
                    ..sh("sleep 1.2; for i in $(seq 1 10); do echo $i; echo $i >&2; done")
                },
                ProcessIo {
                    stdout: Some(run_out),
                    stderr: Some(run_err),
                    ..Default::default()
                },
            )
            .await
            .expect("run");
        let (attach_out, attach_out_text) = collector();
        let (attach_err, attach_err_text) = collector();
        let mut attached = c
            .attach(
                &id,
                ProcessIo {
                    stdout: Some(attach_out),
                    stderr: Some(attach_err),
                    ..Default::default()
                },
            )
            .await
            .expect("attach");
        runs.push(tokio::spawn(async move {
            let statuses = (
                run.wait().await.expect("run exit"),
                attached.wait().await.expect("attach exit"),
            );
            drop((run, attached));
            let texts = [
                run_out_text.await.expect("text"),
                run_err_text.await.expect("text"),
                attach_out_text.await.expect("text"),
                attach_err_text.await.expect("text"),
            ];
            (statuses, texts)
        }));
    }
    for run in runs {
        let (statuses, texts) = run.await.expect("a run");
        assert_eq!(statuses, (0, 0));
        for text in texts {
            assert_eq!(text, expected);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_are_isolated_from_each_other_and_the_host() {
    let a = create_default().await;
    let b = create_default().await;
    ok(&a, "echo secret > /tmp/a-only").await;
    let out = run(&b, sh("cat /tmp/a-only")).await;
    assert_ne!(out.status, 0);
    // B cannot see A's processes.
    let mut sleeper = a
        .run(sh("exec sleep 1000"), ProcessIo::default())
        .await
        .expect("run");
    let count = ok(&b, "ls /proc | grep -c '^[0-9]'").await;
    let in_a = ok(&a, "ls /proc | grep -c '^[0-9]'").await;
    assert!(count.trim().parse::<u32>().unwrap() < in_a.trim().parse::<u32>().unwrap() + 1);
    // The host's processes are invisible.
    assert!(
        !ok(&b, "cat /proc/*/comm 2>/dev/null")
            .await
            .contains("trellis"),
        "the server is visible inside a container"
    );
    sleeper.signal(Signal::Kill).await.expect("kill");
    assert_eq!(sleeper.wait().await.expect("exit"), 137);
    // Destroying one container ends its processes; the other is unaffected.
    let mut long = b
        .run(sh("exec sleep 1000"), ProcessIo::default())
        .await
        .expect("run");
    let handle = b.handle().to_string();
    drop(b);
    let status = tokio::time::timeout(Duration::from_secs(30), long.wait())
        .await
        .expect("the process to end with its container");
    assert!(
        status.is_err() || status.as_ref().ok() == Some(&137),
        "{status:?}"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            client().container(&handle).info().await.is_err()
        })
        .await
    );
    assert_eq!(ok(&a, "cat /tmp/a-only").await, "secret\n");
}

/// The host pid of the process whose command line is exactly `args`.
fn host_pid_of(args: &[&str]) -> Option<u32> {
    let wanted: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        (std::fs::read(e.path().join("cmdline")).ok()? == wanted).then_some(pid)
    })
}

/// The capacity of the pipe a process has as descriptor `fd`, read from the host.
fn pipe_capacity(pid: u32, fd: u32) -> i32 {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let pipe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/{fd}"))
        .expect("the process's pipe");
    // SAFETY: F_GETPIPE_SZ on a descriptor we own.
    unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_GETPIPE_SZ) }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_process_gets_full_sized_output_pipes_however_many_run() {
    // Every unprivileged container's root is one host user; past 64 MiB of pipes
    // (fs.pipe-user-pages-soft) the kernel gives that user's new pipes two pages. Forty
    // processes hold 80 MiB of output pipes: the last must still get 1 MiB ones.
    let c = create_default().await;
    let mut processes = Vec::new();
    for i in 0..40 {
        let spec = ProcessSpec {
            path: "sleep".into(),
            args: vec![format!("{}", 7000 + i)],
            ..Default::default()
        };
        processes.push(c.run(spec, ProcessIo::default()).await.expect("run"));
    }
    let last = host_pid_of(&["sleep", "7039"]).expect("the last process on the host");
    assert_eq!(pipe_capacity(last, 1), 1 << 20, "stdout");
    assert_eq!(pipe_capacity(last, 2), 1 << 20, "stderr");
}
