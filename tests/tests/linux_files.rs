//! Files in and out of real containers over HTTP (as root): tar streams, users and their
//! permissions, and attempts to escape the container's root; bind mounts.

mod linux_support;

use linux_support::*;
use std::path::Path;
use trellis_client::Error;
use trellis_core::api::{BindMount, BindMountMode, BindMountOrigin, ContainerSpec};

#[tokio::test(flavor = "multi_thread")]
async fn files_stream_in_and_out_with_modes_and_owners() {
    let c = create_default().await;
    let tar = tar_of(&[
        ("a.txt", b"alpha\n", 0o644),
        ("sub/b.sh", b"#!/bin/sh\necho from-b\n", 0o755),
    ]);
    stream_in(&c, "/data/in", "root", tar)
        .await
        .expect("stream in");
    assert_eq!(
        ok(
            &c,
            "cat /data/in/a.txt; /data/in/sub/b.sh; stat -c '%a %u' /data/in/sub/b.sh"
        )
        .await,
        "alpha\nfrom-b\n755 0\n"
    );
    // As a user: files are theirs.
    stream_in(
        &c,
        "/home/vcap/drop",
        "vcap",
        tar_of(&[("mine", b"m", 0o600)]),
    )
    .await
    .expect("stream in as vcap");
    assert_eq!(
        ok(&c, "stat -c '%u:%g %a' /home/vcap/drop/mine").await,
        "1000:1000 600\n"
    );

    // Out: a directory with its name, or its contents with a trailing slash.
    let out = stream_out(&c, "/data/in", "root")
        .await
        .expect("stream out");
    assert_eq!(
        out.get("in/a.txt").map(Vec::as_slice),
        Some(&b"alpha\n"[..])
    );
    assert!(out.contains_key("in/sub/b.sh"), "{:?}", out.keys());
    let out = stream_out(&c, "/data/in/", "root")
        .await
        .expect("stream out");
    assert!(out.contains_key("./a.txt"), "{:?}", out.keys());
    let out = stream_out(&c, "/data/in/a.txt", "").await.expect("a file");
    assert_eq!(out.keys().collect::<Vec<_>>(), ["a.txt"]);

    // A large file survives the round trip.
    let big: Vec<u8> = (0..(4u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    stream_in(&c, "/big", "", tar_of(&[("blob", &big, 0o644)]))
        .await
        .expect("a big stream in");
    let out = stream_out(&c, "/big/blob", "")
        .await
        .expect("a big stream out");
    assert!(out["blob"] == big, "the big file changed on the way");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_is_held_to_their_permissions() {
    let c = create_default().await;
    ok(
        &c,
        "mkdir -p /root/private && echo s > /root/private/s && chmod 700 /root",
    )
    .await;
    let err = stream_out(&c, "/root/private", "vcap")
        .await
        .expect_err("vcap reads root's files");
    assert!(err.to_string().contains("error streaming out"), "{err}");
    let err = stream_in(&c, "/root/private", "vcap", tar_of(&[("x", b"x", 0o644)]))
        .await
        .expect_err("vcap writes into root's directory");
    assert!(err.to_string().contains("error streaming in"), "{err}");
    let err = stream_out(&c, "/does/not/exist", "root")
        .await
        .expect_err("a missing source");
    assert!(err.to_string().contains("/does/not/exist"), "{err}");
    let err = stream_in(&c, "/tmp", "nobody-here", tar_of(&[("x", b"x", 0o644)]))
        .await
        .expect_err("an unknown user");
    assert!(err.to_string().contains("nobody-here"), "{err}");
    // The container still works after every refusal.
    assert_eq!(ok(&c, "cat /root/private/s").await, "s\n");
}

/// A file on the host that no container may touch; its path is unique to this test.
fn host_canary(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("trellis-escape-{}-{name}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_in_cannot_escape_the_container() {
    let c = create_default().await;
    let canary = host_canary("in");
    let _ = std::fs::remove_file(&canary);
    let canary_str = canary.display().to_string();
    let rel = format!("../../../../../../../..{canary_str}");

    // `..` and absolute names in the archive.
    let tar = raw_tar_end(
        [
            raw_tar_entry(&rel, b'0', "", b"dotdot"),
            raw_tar_entry(&canary_str, b'0', "", b"absolute"),
        ]
        .concat(),
    );
    let _ = stream_in(&c, "/tmp/unpack", "", tar).await;
    assert!(!canary.exists(), "stream in wrote {canary_str} on the host");

    // A symlink in the archive pointing out, then a file through it.
    let tar = raw_tar_end(
        [
            raw_tar_entry("out", b'2', "/../../../../..", b""),
            raw_tar_entry(&format!("out{canary_str}"), b'0', "", b"via-link"),
        ]
        .concat(),
    );
    let _ = stream_in(&c, "/tmp/unpack2", "", tar).await;
    assert!(!canary.exists(), "stream in followed a symlink to the host");

    // A destination that is a symlink out of the root: it resolves inside the container.
    ok(&c, "ln -s /../../../../.. /tmp/up").await;
    let dest = format!(
        "/tmp/up{}",
        Path::new(&canary_str).parent().unwrap().display()
    );
    let name = canary.file_name().unwrap().to_string_lossy().into_owned();
    stream_in(&c, &dest, "", tar_of(&[(&name, b"inside", 0o644)]))
        .await
        .expect("stream in through a symlink inside the container");
    assert!(!canary.exists(), "a symlinked destination reached the host");
    assert_eq!(ok(&c, &format!("cat {canary_str}")).await, "inside");
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_out_cannot_read_the_host() {
    let c = create_default().await;
    let canary = host_canary("out");
    std::fs::write(&canary, "host secret").expect("a host file");
    let canary_str = canary.display().to_string();
    for source in [
        format!("../../../../../..{canary_str}"),
        canary_str.clone(),
        format!("/proc/1/root{canary_str}"),
    ] {
        // Resolves inside the container, where no such file exists.
        match stream_out(&c, &source, "").await {
            Err(e) => assert!(e.to_string().contains("error streaming out"), "{e}"),
            Ok(entries) => assert!(
                entries.values().all(|v| v != b"host secret"),
                "{source} read the host's file"
            ),
        }
    }
    ok(&c, "ln -s / /tmp/root-link").await;
    let out = stream_out(&c, "/tmp/root-link", "")
        .await
        .expect("a symlink");
    // A symlink is streamed as a link, not followed.
    assert_eq!(out.len(), 1, "{:?}", out.keys());
    let _ = std::fs::remove_file(&canary);
}

#[tokio::test(flavor = "multi_thread")]
async fn bind_mounts_read_only_and_read_write() {
    let host_dir = tempfile::tempdir().expect("a host directory");
    std::fs::write(host_dir.path().join("from-host"), "hello from the host\n").unwrap();
    let rw_dir = tempfile::tempdir().expect("a host directory");
    // Writable by container root, which is host uid 4294967294 in an unprivileged container
    // (a directory of host root's is not: see linux_security.rs).
    std::os::unix::fs::chown(rw_dir.path(), Some(4294967294), Some(4294967294)).unwrap();
    let host_file = host_dir.path().join("single");
    std::fs::write(&host_file, "one file\n").unwrap();
    let c = create(ContainerSpec {
        bind_mounts: vec![
            BindMount {
                src_path: host_dir.path().display().to_string(),
                dst_path: "/mnt/ro".into(),
                mode: BindMountMode::ReadOnly,
                origin: BindMountOrigin::Host,
            },
            BindMount {
                src_path: rw_dir.path().display().to_string(),
                dst_path: "/mnt/rw/deep".into(),
                mode: BindMountMode::ReadWrite,
                origin: BindMountOrigin::Host,
            },
            BindMount {
                src_path: host_file.display().to_string(),
                dst_path: "/etc/single".into(),
                mode: BindMountMode::ReadOnly,
                origin: BindMountOrigin::Host,
            },
            // From the container's own filesystem.
            BindMount {
                src_path: "/etc".into(),
                dst_path: "/mnt/etc-view".into(),
                mode: BindMountMode::ReadOnly,
                origin: BindMountOrigin::Container,
            },
        ],
        ..Default::default()
    })
    .await;
    assert_eq!(
        ok(&c, "cat /mnt/ro/from-host /etc/single").await,
        "hello from the host\none file\n"
    );
    let out = run(&c, sh("echo x > /mnt/ro/new")).await;
    assert_ne!(out.status, 0, "a read-only bind mount was writable");
    assert!(out.stderr.contains("Read-only"), "{out:?}");
    ok(&c, "echo written > /mnt/rw/deep/out").await;
    assert_eq!(
        std::fs::read_to_string(rw_dir.path().join("out")).unwrap(),
        "written\n"
    );
    assert!(ok(&c, "ls /mnt/etc-view").await.contains("passwd"));
    // Files stream in through a read-write mount, not into a read-only one.
    stream_in(&c, "/mnt/rw/deep", "", tar_of(&[("streamed", b"s", 0o644)]))
        .await
        .expect("stream into a read-write mount");
    assert!(rw_dir.path().join("streamed").exists());
    assert!(stream_in(&c, "/mnt/ro", "", tar_of(&[("no", b"n", 0o644)]))
        .await
        .is_err());
    drop(c);
    // Destroying the container unmounts, never deletes, the host's files.
    assert!(host_dir.path().join("from-host").exists());
    assert!(rw_dir.path().join("out").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bind_mount_source_fails_the_create_cleanly() {
    let client = client();
    for src in ["/no/such/source/dir", "relative/path"] {
        let err = client
            .create(ContainerSpec {
                handle: "lx-bad-bind".into(),
                bind_mounts: vec![BindMount {
                    src_path: src.into(),
                    dst_path: "/mnt/x".into(),
                    mode: BindMountMode::ReadOnly,
                    origin: BindMountOrigin::Host,
                }],
                ..Default::default()
            })
            .await
            .expect_err("a missing bind mount source");
        assert!(err.to_string().contains(src), "{err}");
        // Nothing is left: not the container, nor its directory.
        match client.container("lx-bad-bind").info().await {
            Err(Error::ContainerNotFound { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(!server().depot().join("lx-bad-bind").exists());
    }
    // The handle is free again.
    let c = create(ContainerSpec {
        handle: "lx-bad-bind".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(ok(&c, "echo ok").await, "ok\n");
}

/// `security.capability` as `getfattr` shows it for `/bin/ping` (GATS streams this one in).
const PING_CAPABILITY: &str = "0100000200200000000000000000000000000000";

/// A tar holding `d/` and `d/capfile` (mode 0754) whose PAX header carries `security.capability`
/// and `user.note=kept`, then `d/plain`, as Go's archive/tar and GNU tar write them.
fn tar_with_xattrs() -> Vec<u8> {
    let cap: Vec<u8> = (0..PING_CAPABILITY.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&PING_CAPABILITY[i..i + 2], 16).unwrap())
        .collect();
    let mut records = Vec::new();
    for (key, value) in [
        ("SCHILY.xattr.security.capability", cap.as_slice()),
        ("SCHILY.xattr.user.note", b"kept".as_slice()),
    ] {
        // "<length> <key>=<value>\n", the length counting itself.
        let rest = key.len() + value.len() + 3;
        let mut len = rest + rest.to_string().len();
        if len.to_string().len() != rest.to_string().len() {
            len += 1;
        }
        records.extend_from_slice(format!("{len} {key}=").as_bytes());
        records.extend_from_slice(value);
        records.push(b'\n');
    }
    let mut builder = tar::Builder::new(Vec::new());
    let header = |kind, size: usize, mode| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    };
    builder
        .append_data(
            &mut header(tar::EntryType::Directory, 0, 0o755),
            "d/",
            std::io::empty(),
        )
        .unwrap();
    builder
        .append_data(
            &mut header(tar::EntryType::XHeader, records.len(), 0o644),
            "d/PaxHeaders/capfile",
            records.as_slice(),
        )
        .unwrap();
    builder
        .append_data(
            &mut header(tar::EntryType::Regular, 9, 0o754),
            "d/capfile",
            &b"some-body"[..],
        )
        .unwrap();
    builder
        .append_data(
            &mut header(tar::EntryType::Regular, 5, 0o644),
            "d/plain",
            &b"plain"[..],
        )
        .unwrap();
    builder.into_inner().unwrap()
}

/// An extended attribute of a file on the host, if set.
fn host_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the length given.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let len = usize::try_from(len).ok()?;
    buf.truncate(len);
    Some(buf)
}

/// GATS (lifecycle_test.go) streams in, as a non-root user, a file carrying a
/// `security.capability` only root may set. gdn's tar leaves that attribute out and carries on;
/// so do we: the stream succeeds, the file is there with its contents and mode, and the
/// attributes the user may set are set. Root still gets every attribute.
#[tokio::test(flavor = "multi_thread")]
async fn stream_in_skips_attributes_the_user_cannot_set() {
    let c = create_default().await;
    let upper = server().layout().overlay_upper_dir(c.handle());

    stream_in(&c, "/home/vcap/in", "vcap", tar_with_xattrs())
        .await
        .expect("a non-root stream in with an attribute it cannot set");
    let out = run(
        &c,
        sh_as(
            "vcap",
            "cat /home/vcap/in/d/capfile /home/vcap/in/d/plain; echo; \
             stat -c '%a %u:%g' /home/vcap/in/d/capfile /home/vcap/in/d",
        ),
    )
    .await;
    assert_eq!(
        (out.status, out.stdout.as_str()),
        (0, "some-bodyplain\n754 1000:1000\n755 1000:1000\n"),
        "{out:?}"
    );
    let file = upper.join("home/vcap/in/d/capfile");
    assert!(file.exists(), "{} is not in the upper dir", file.display());
    assert_eq!(host_xattr(&file, "security.capability"), None);
    assert_eq!(
        host_xattr(&file, "user.note").as_deref(),
        Some(&b"kept"[..])
    );

    // As root, every attribute is set.
    stream_in(&c, "/data/xattrs", "root", tar_with_xattrs())
        .await
        .expect("a root stream in");
    assert_eq!(ok(&c, "cat /data/xattrs/d/capfile").await, "some-body");
    let file = upper.join("data/xattrs/d/capfile");
    assert_eq!(
        host_xattr(&file, "user.note").as_deref(),
        Some(&b"kept"[..])
    );
    assert!(
        host_xattr(&file, "security.capability").is_some(),
        "root's security.capability was not set"
    );
}
