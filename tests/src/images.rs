//! Test images shared by the black-box tests, the os crate's tests and the benchmark: the
//! busybox rootfs (`scripts/build-rootfs`), OCI layouts made from it with umoci, and a Docker
//! registry on loopback (Debian's `docker-registry`) that skopeo pushes them to.
//!
//! The rootfs is built once: `scripts/test` builds it and names it in `$TRELLIS_TEST_ROOTFS`
//! (a directory, with `<dir>.tar` beside it); without that variable it is built on demand into
//! `target/test-rootfs`, under a lock so concurrent test binaries build it once.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The environment variable naming a prebuilt busybox rootfs directory.
pub const ROOTFS_ENV: &str = "TRELLIS_TEST_ROOTFS";

/// The repository's root (scripts live there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the repository")
        .to_path_buf()
}

/// The busybox rootfs directory (built once; see the module docs).
pub fn busybox_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        if let Some(dir) = std::env::var_os(ROOTFS_ENV) {
            let dir = PathBuf::from(dir);
            assert!(
                dir.join("bin/busybox").exists() && dir.with_extension("tar").exists(),
                "${ROOTFS_ENV}={} is not a rootfs built by scripts/build-rootfs --tar",
                dir.display()
            );
            return dir;
        }
        let dir = repo_root().join("target/test-rootfs");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.with_extension("lock"))
            .expect("the rootfs build lock");
        // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        if !(dir.join("bin/busybox").exists() && dir.with_extension("tar").exists()) {
            run(Command::new(repo_root().join("scripts/build-rootfs"))
                .arg(&dir)
                .arg("--tar")
                .arg(dir.with_extension("tar")));
        }
        dir
    })
}

/// The busybox rootfs as a tarball (an image URI the server accepts as a path).
pub fn busybox_tar() -> PathBuf {
    busybox_rootfs().with_extension("tar")
}

/// Runs a command to success and returns its stdout, panicking with its output otherwise.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The env every image made by [`oci_layout`] carries.
pub const IMAGE_VAR: &str = "IMAGE_VAR=from-the-image";

/// An OCI layout at `base/oci`, tag `v1`: the busybox rootfs, then a layer adding
/// /data/added ("second layer\n"), one deleting /bin/kill (a whiteout), and one replacing
/// /home with a directory holding only `only` (opaque); its config sets [`IMAGE_VAR`] and a
/// PATH ending in /from-image.
pub fn oci_layout(base: &Path) -> PathBuf {
    let layout = base.join("oci");
    let image = format!("{}:v1", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["insert", "--image", &image])
        .arg(busybox_rootfs())
        .arg("/"));
    let extra = base.join("extra");
    std::fs::create_dir_all(extra.join("data")).expect("a layer directory");
    std::fs::write(extra.join("data/added"), "second layer\n").expect("a layer file");
    run(Command::new("umoci")
        .args(["insert", "--image", &image])
        .arg(&extra)
        .arg("/"));
    run(Command::new("umoci").args(["insert", "--image", &image, "--whiteout", "/bin/kill"]));
    let opaque = base.join("opaque");
    std::fs::create_dir_all(&opaque).expect("a layer directory");
    std::fs::write(opaque.join("only"), "only me\n").expect("a layer file");
    run(Command::new("umoci")
        .args(["insert", "--image", &image, "--opaque"])
        .arg(&opaque)
        .arg("/home"));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/from-image",
        "--config.env",
        IMAGE_VAR,
    ]));
    layout
}

/// A Docker registry (Debian's `docker-registry`) on 127.0.0.1 behind Docker Hub's token
/// authentication, started by `scripts/stand-in-registry` and storing under a directory of its
/// own; stopped when dropped.
pub struct Registry {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("trellis-registry-")
            .tempdir()
            .expect("a temporary directory");
        let out = stand_in_registry(&[OsStr::new("start"), dir.path().as_os_str()]);
        let port = out
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("stand-in-registry start printed {out:?}, not a port"));
        Registry { port, dir }
    }

    /// Its address, `127.0.0.1:PORT`, as in image URIs and registry flags.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes the stand-ins for the Docker Hub images GATS pulls (`scripts/stand-in-registry`
    /// names them, e.g. `preexisting-users`), built into the OCI layout `layout` by
    /// [`stand_in_images`], under their Docker Hub names (`cfgarden/preexisting_users:latest`).
    pub fn push_stand_ins(&self, layout: &Path, images: &[&str]) {
        let mut args = vec![
            OsStr::new("push"),
            self.dir.path().as_os_str(),
            layout.as_os_str(),
        ];
        args.extend(images.iter().map(OsStr::new));
        stand_in_registry(&args);
    }

    /// Pushes tag `tag` of the OCI layout to `<this registry>/<repository>:<tag>`.
    pub fn push(&self, layout: &Path, tag: &str, repository: &str) {
        run(Command::new("skopeo").args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{}/{repository}:{tag}", self.addr()),
        ]));
    }

    /// The username and password that the private stand-ins (`private-image-test`) need: the
    /// authenticating front serves them only to these.
    pub fn credentials(&self) -> (String, String) {
        let text = std::fs::read_to_string(self.dir.path().join("credentials"))
            .expect("stand-in-registry start writes DIR/credentials");
        let mut lines = text.lines().map(str::to_string);
        match (lines.next(), lines.next()) {
            (Some(username), Some(password)) => (username, password),
            _ => panic!("DIR/credentials is not a username and a password line: {text:?}"),
        }
    }

    /// The Garden image URI of `repository` at `tag` here.
    pub fn uri(&self, repository: &str, tag: &str) -> String {
        format!("docker://{}/{repository}#{tag}", self.addr())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/stand-in-registry"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// Builds the named stand-in images (see `scripts/stand-in-registry`) into an OCI layout at
/// `base/stand-ins`, one tag per image.
pub fn stand_in_images(base: &Path, images: &[&str]) -> PathBuf {
    let layout = base.join("stand-ins");
    let mut args = vec![OsStr::new("build"), layout.as_os_str()];
    args.extend(images.iter().map(OsStr::new));
    stand_in_registry(&args);
    layout
}

/// Runs `scripts/stand-in-registry` to success and returns its stdout.
fn stand_in_registry(args: &[&OsStr]) -> String {
    run(Command::new(repo_root().join("scripts/stand-in-registry")).args(args))
}
