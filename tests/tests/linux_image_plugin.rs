//! External image plugins over HTTP (as root): with `--image-plugin` and
//! `--privileged-image-plugin`, containers' root filesystems come from the plugin
//! (`trellis-test-image-plugin`, which speaks grootfs's command line and JSON), spoken to as
//! guardian speaks to grootfs; the plugin's failures are clear errors that leave nothing
//! behind; its rootfses outlive server restarts and crashes and are deleted by destroy,
//! `--destroy-containers-on-startup` and `trellis cleanup`.

mod linux_support;

use linux_support::ok;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use trellis_client::Client;
use trellis_core::api::{ContainerSpec, DiskLimits, DiskScope, ImageRef, Limits};
use trellis_tests::images::busybox_tar;
use trellis_tests::{eventually, ServerOptions, TestServer};

const PLUGIN: &str = env!("CARGO_BIN_EXE_trellis-test-image-plugin");
/// Container root as the server maps it by default (gdn's maximus).
const MAXIMUS: u32 = 4294967294;

/// One plugin store: where the plugin keeps its images and logs its calls.
struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    /// A store initialised as gdn's deployments initialise grootfs's: with the server's id
    /// mappings for unprivileged containers, none for privileged ones.
    fn new(mapped: bool) -> Store {
        let store = Store {
            dir: tempfile::Builder::new()
                .prefix("trellis-plugin-store-")
                .tempdir()
                .expect("a directory"),
        };
        let mut init = store.command();
        init.args(["init-store", "--store-size-bytes", "123456789"]);
        if mapped {
            init.args([
                "--uid-mapping",
                &format!("0:{MAXIMUS}:1"),
                "--uid-mapping",
                "1:1:4294967293",
                "--gid-mapping",
                &format!("0:{MAXIMUS}:1"),
                "--gid-mapping",
                "1:1:4294967293",
            ]);
        }
        let status = init.status().expect("running the plugin");
        assert!(status.success());
        std::fs::remove_file(store.path().join("argv.log")).expect("the init-store log");
        store
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self) -> Command {
        let mut command = Command::new(PLUGIN);
        command.arg("--store").arg(self.path());
        command
    }

    /// Every call the plugin had, its arguments after `--store DIR`.
    fn calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.path().join("argv.log"))
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let args: Vec<String> = serde_json::from_str(line).expect("a logged argv");
                args.into_iter().skip(2).collect()
            })
            .collect()
    }

    /// The calls of one command (`create`, `delete`...) for `handle`.
    fn calls_of(&self, command: &str, handle: &str) -> Vec<Vec<String>> {
        self.calls()
            .into_iter()
            .filter(|c| {
                c.iter().position(|a| a == command).is_some_and(|at| {
                    // Global flags come before the command.
                    c[..at].iter().all(|a| a.starts_with("--"))
                }) && c.last().map(String::as_str) == Some(handle)
            })
            .collect()
    }

    /// Makes `command` fail (`fail`), answer no JSON (`bad-json`) or wait for [`Store::release`]
    /// (`wait`); `None` restores it.
    fn behave(&self, command: &str, behaviour: Option<&str>) {
        let dir = self.path().join("behaviour");
        std::fs::create_dir_all(&dir).unwrap();
        match behaviour {
            Some(b) => std::fs::write(dir.join(command), b).unwrap(),
            None => std::fs::remove_file(dir.join(command)).unwrap(),
        }
    }

    /// Lets a waiting `command` go on.
    fn release(&self, command: &str) {
        std::fs::write(
            self.path()
                .join("behaviour")
                .join(format!("{command}.release")),
            "",
        )
        .unwrap();
    }

    fn images(&self) -> Vec<String> {
        entries(&self.path().join("images"))
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Plugin flags: each plugin with `--store DIR` (the first as gdn's `=` form, the other quoted
/// as gdn's deployments write it) and any `extra` arguments.
fn plugin_flags(
    unprivileged: Option<&Store>,
    privileged: Option<&Store>,
    extra: &[&str],
) -> Vec<String> {
    let mut flags = Vec::new();
    if let Some(store) = unprivileged {
        flags.extend([
            "--image-plugin".to_string(),
            PLUGIN.to_string(),
            "--image-plugin-extra-arg=--store".to_string(),
            "--image-plugin-extra-arg".to_string(),
            store.path().display().to_string(),
        ]);
        for arg in extra {
            flags.push(format!("--image-plugin-extra-arg={arg}"));
        }
    }
    if let Some(store) = privileged {
        flags.extend([
            "--privileged-image-plugin".to_string(),
            PLUGIN.to_string(),
            "--privileged-image-plugin-extra-arg".to_string(),
            "\"--store\"".to_string(),
            "--privileged-image-plugin-extra-arg".to_string(),
            store.path().display().to_string(),
        ]);
    }
    flags
}

/// A server whose default rootfs is the busybox tarball (what the test plugin unpacks).
fn server_with(flags: Vec<String>) -> TestServer {
    let mut options: ServerOptions = TestServer::linux_options();
    options.default_rootfs = Some(busybox_tar().display().to_string());
    options.extra_args.extend(flags);
    TestServer::start(options)
}

fn spec(handle: &str) -> ContainerSpec {
    ContainerSpec {
        handle: handle.into(),
        ..Default::default()
    }
}

/// The host paths of the server's directory for `handle`.
fn container_dir(server: &TestServer, handle: &str) -> PathBuf {
    server.depot().join(handle)
}

fn owner(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .expect("the path exists")
        .uid()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unprivileged_container_gets_the_plugins_rootfs_env_and_disk_metrics() {
    let store = Store::new(true);
    let privileged_store = Store::new(false);
    let server = server_with(plugin_flags(Some(&store), Some(&privileged_store), &[]));
    let client = server.client();
    let tar = busybox_tar().display().to_string();
    let c = client
        .create(ContainerSpec {
            image: ImageRef {
                uri: tar.clone(),
                username: "someone".into(),
                password: "secret".into(),
            },
            limits: Limits {
                disk_limits: DiskLimits {
                    byte_hard: 64 << 20,
                    scope: DiskScope::Exclusive,
                    ..Default::default()
                },
                ..Default::default()
            },
            ..spec("plug-unpriv")
        })
        .await
        .expect("create with the plugin");
    // The command line guardian builds; the store's own id mappings, none on it.
    assert_eq!(
        store.calls_of("create", "plug-unpriv"),
        [[
            "create",
            "--disk-limit-size-bytes",
            "67108864",
            "--exclude-image-from-quota",
            "--username",
            "someone",
            "--password",
            "secret",
            &tar,
            "plug-unpriv"
        ]]
    );
    assert!(privileged_store.calls().is_empty());
    // The plugin's rootfs, with the plugin's env before the container's.
    assert_eq!(
        ok(
            &c,
            "cat /etc/image-plugin; echo $TEST_PLUGIN_IMAGE; echo $PATH"
        )
        .await,
        format!("plug-unpriv\n{tar}\n/usr/sbin:/usr/bin:/sbin:/bin:/from-plugin\n")
    );
    // Used as the plugin made it, already owned by the mapped ids: container root owns its
    // files and what it writes lands in the store as the host's maximus, not mapped again.
    assert_eq!(
        ok(
            &c,
            "stat -c '%u %g' / /etc/passwd; echo x > /etc/new; stat -c %u /etc/new"
        )
        .await,
        "0 0\n0 0\n0\n"
    );
    let rootfs = store.path().join("images/plug-unpriv/rootfs");
    assert_eq!(owner(&rootfs.join("etc/new")), MAXIMUS);
    assert_eq!(owner(&rootfs.join("etc/passwd")), MAXIMUS);
    // Disk metrics are the plugin's stats.
    ok(&c, "head -c 1048576 /dev/zero > /big").await;
    let metrics = c.metrics().await.expect("metrics");
    assert_eq!(store.calls_of("stats", "plug-unpriv").len(), 1);
    let exclusive = metrics.disk_stat.exclusive_bytes_used;
    assert!(
        (1 << 20..2 << 20).contains(&exclusive),
        "exclusive bytes {exclusive}"
    );
    assert!(metrics.disk_stat.total_bytes_used > exclusive);
    // The schedulable disk is the plugin's capacity.
    let capacity = client.capacity().await.expect("capacity");
    assert_eq!(capacity.schedulable_disk_in_bytes, 123456789);

    client.destroy("plug-unpriv").await.expect("destroy");
    assert_eq!(
        store.calls_of("delete", "plug-unpriv"),
        [["delete", "plug-unpriv"]]
    );
    assert!(store.images().is_empty());
    assert!(!container_dir(&server, "plug-unpriv").exists());
    assert!(privileged_store.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_privileged_container_uses_the_privileged_plugin() {
    let store = Store::new(true);
    let privileged_store = Store::new(false);
    let server = server_with(plugin_flags(Some(&store), Some(&privileged_store), &[]));
    let client = server.client();
    // No image: the plugin is given the default rootfs.
    let c = client
        .create(ContainerSpec {
            privileged: true,
            ..spec("plug-priv")
        })
        .await
        .expect("create with the privileged plugin");
    let tar = busybox_tar().display().to_string();
    assert_eq!(
        privileged_store.calls_of("create", "plug-priv"),
        [["create", tar.as_str(), "plug-priv"]]
    );
    assert!(store.calls().is_empty());
    assert_eq!(
        ok(
            &c,
            "cat /etc/image-plugin; echo x > /etc/new; stat -c %u /etc/new"
        )
        .await,
        "plug-priv\n0\n"
    );
    assert_eq!(
        owner(
            &privileged_store
                .path()
                .join("images/plug-priv/rootfs/etc/new")
        ),
        0
    );
    client.destroy("plug-priv").await.expect("destroy");
    assert_eq!(privileged_store.calls_of("delete", "plug-priv").len(), 1);
    assert!(privileged_store.images().is_empty());
    assert!(store.calls().is_empty());
    // An explicit raw:// image is used as it is, without a plugin.
    let raw = client
        .create(ContainerSpec {
            image: ImageRef {
                uri: format!(
                    "raw://{}",
                    trellis_tests::images::busybox_rootfs().display()
                ),
                ..Default::default()
            },
            ..spec("plug-raw")
        })
        .await
        .expect("a raw image");
    assert_eq!(ok(&raw, "echo hi").await, "hi\n");
    client.destroy("plug-raw").await.expect("destroy");
    assert!(store.calls().is_empty() && privileged_store.calls_of("create", "plug-raw").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn only_an_unprivileged_plugin_refuses_privileged_containers_as_gdn() {
    let store = Store::new(true);
    let server = server_with(plugin_flags(Some(&store), None, &[]));
    let client = server.client();
    let err = client
        .create(ContainerSpec {
            privileged: true,
            ..spec("plug-nopriv")
        })
        .await
        .expect_err("no privileged plugin");
    assert!(
        err.to_string()
            .contains("no privileged_image_plugin provided"),
        "{err}"
    );
    assert!(store.calls().is_empty());
    assert!(client
        .containers(&Default::default())
        .await
        .unwrap()
        .is_empty());
    assert!(!container_dir(&server, "plug-nopriv").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn mounts_the_plugin_answers_are_mounted_over_its_rootfs() {
    // grootfs without mounting: an empty rootfs dir and an overlay on `/` in the answer.
    let store = Store::new(true);
    let server = server_with(plugin_flags(Some(&store), None, &["--without-mount"]));
    let client = server.client();
    let c = client.create(spec("plug-mounts")).await.expect("create");
    assert_eq!(
        ok(
            &c,
            "cat /etc/image-plugin; echo x > /etc/new; stat -c %u /etc/new"
        )
        .await,
        "plug-mounts\n0\n"
    );
    let image = store.path().join("images/plug-mounts");
    // Writes land in the overlay's upper dir in the store, the plugin's rootfs dir stays empty.
    assert_eq!(owner(&image.join("upper/etc/new")), MAXIMUS);
    assert!(entries(&image.join("rootfs")).is_empty());
    let metrics = c.metrics().await.expect("metrics");
    assert!(metrics.disk_stat.exclusive_bytes_used >= 2, "{metrics:?}");

    client.destroy("plug-mounts").await.expect("destroy");
    assert_eq!(store.calls_of("delete", "plug-mounts").len(), 1);
    assert!(store.images().is_empty(), "the overlay was unmounted first");
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_failures_are_errors_naming_the_plugin_and_leave_nothing() {
    let store = Store::new(true);
    let server = server_with(plugin_flags(Some(&store), None, &[]));
    let client = server.client();

    // create exits non-zero: its stderr is the error.
    store.behave("create", Some("fail"));
    let err = client.create(spec("plug-fail")).await.expect_err("fails");
    let message = err.to_string();
    assert!(message.contains(PLUGIN), "{message}");
    assert!(
        message.contains("test plugin: create told to fail"),
        "{message}"
    );
    // Whatever it made is deleted, and the server keeps nothing of the container.
    assert_eq!(store.calls_of("delete", "plug-fail").len(), 1);
    assert!(!container_dir(&server, "plug-fail").exists());

    // create answers no JSON.
    store.behave("create", Some("bad-json"));
    let err = client
        .create(spec("plug-bad-json"))
        .await
        .expect_err("fails");
    let message = err.to_string();
    assert!(message.contains(PLUGIN), "{message}");
    assert!(message.contains("this is not json"), "{message}");
    assert_eq!(store.calls_of("delete", "plug-bad-json").len(), 1);
    assert!(!container_dir(&server, "plug-bad-json").exists());
    store.behave("create", None);
    assert!(client
        .containers(&Default::default())
        .await
        .unwrap()
        .is_empty());
    assert!(store.images().is_empty());
    assert!(
        entries(&server.depot()).is_empty(),
        "{:?}",
        entries(&server.depot())
    );

    // stats fails: metrics say why.
    let c = client.create(spec("plug-ok")).await.expect("create");
    store.behave("stats", Some("fail"));
    let err = c.metrics().await.expect_err("stats fails");
    assert!(
        err.to_string().contains("test plugin: stats told to fail"),
        "{err}"
    );
    store.behave("stats", Some("bad-json"));
    let err = c.metrics().await.expect_err("stats answers no JSON");
    assert!(err.to_string().contains("parsing image plugin"), "{err}");
    store.behave("stats", None);
    c.metrics().await.expect("metrics again");

    // capacity fails: the whole disk is schedulable, as with gdn.
    store.behave("capacity", Some("fail"));
    let capacity = client.capacity().await.expect("capacity");
    assert_eq!(capacity.schedulable_disk_in_bytes, capacity.disk_in_bytes);
    store.behave("capacity", None);

    // delete fails: destroy says why and keeps the plugin's rootfs to delete on a retry.
    store.behave("delete", Some("fail"));
    let err = client.destroy("plug-ok").await.expect_err("delete fails");
    assert!(
        err.to_string().contains("test plugin: delete told to fail"),
        "{err}"
    );
    assert_eq!(store.images(), ["plug-ok"]);
    store.behave("delete", None);
    client.destroy("plug-ok").await.expect("destroy again");
    assert!(store.images().is_empty());
    assert!(!container_dir(&server, "plug-ok").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_plugin_holds_up_only_its_own_container() {
    let store = Store::new(true);
    let privileged_store = Store::new(false);
    let server = server_with(plugin_flags(Some(&store), Some(&privileged_store), &[]));
    let client = server.client();
    store.behave("create", Some("wait"));
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.create(spec("plug-slow")).await }
    });
    assert!(
        eventually(Duration::from_secs(60), || async {
            !store.calls_of("create", "plug-slow").is_empty()
        })
        .await,
        "the plugin was not called"
    );
    // While the plugin works on one container, the server answers and creates others.
    client.ping().await.expect("ping");
    client.capacity().await.expect("capacity");
    let other = client
        .create(ContainerSpec {
            privileged: true,
            ..spec("plug-other")
        })
        .await
        .expect("another create");
    assert_eq!(ok(&other, "cat /etc/image-plugin").await, "plug-other\n");
    assert!(!slow.is_finished());

    store.release("create");
    let c = slow.await.unwrap().expect("the slow create");
    assert_eq!(ok(&c, "cat /etc/image-plugin").await, "plug-slow\n");
}

async fn create_running(client: &Client, handle: &str) {
    let c = client.create(spec(handle)).await.expect("create");
    assert_eq!(ok(&c, "cat /etc/image-plugin").await, format!("{handle}\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_rootfses_outlive_restarts_and_are_deleted_after_them() {
    let store = Store::new(true);
    let mut server = server_with(plugin_flags(Some(&store), None, &[]));
    create_running(&server.client(), "plug-kept").await;
    create_running(&server.client(), "plug-startup").await;

    // A crash, then a restart: the container still has its rootfs, and destroy deletes it with
    // the plugin that made it.
    server.kill();
    server.restart();
    let client = server.client();
    let kept = client
        .lookup("plug-kept")
        .await
        .expect("the container is back");
    assert_eq!(ok(&kept, "cat /etc/image-plugin").await, "plug-kept\n");
    client.destroy("plug-kept").await.expect("destroy");
    assert_eq!(store.calls_of("delete", "plug-kept").len(), 1);
    assert_eq!(store.images(), ["plug-startup"]);

    // --destroy-containers-on-startup deletes what the plugin made.
    server.terminate();
    server.restart_with_args(&["--destroy-containers-on-startup"]);
    assert_eq!(store.calls_of("delete", "plug-startup").len(), 1);
    assert!(store.images().is_empty());

    // So does `trellis cleanup`, given the server's flags.
    create_running(&server.client(), "plug-cleanup").await;
    server.terminate();
    let (cleaned, _, stderr) = server.run_cleanup();
    assert!(cleaned, "{stderr}");
    assert_eq!(store.calls_of("delete", "plug-cleanup").len(), 1);
    assert!(store.images().is_empty());
}
