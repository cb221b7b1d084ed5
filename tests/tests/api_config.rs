//! gdn's config file (`trellis --config FILE server`): a file of the shape garden-runc-release
//! renders starts the server, its settings take effect, the command line overrides it, flags
//! Trellis does not act on warn once each, and an invalid file stops the start with its reason.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use trellis_core::api::ContainerSpec;
use trellis_tests::{Backend, TestServer};

/// As garden-runc-release's `config.ini` for a Diego cell. Paths of gdn's helper binaries need
/// not exist (Trellis does not run them); the image plugin's must, as for gdn, so the test
/// points [`GROOTFS`] at a file of its own (the fake backend never runs it).
const CELL_CONFIG: &str = r#"; rendered by garden-runc-release
[server]
; the command line's --bind-port must win over this one
bind-port = 1
log-level = error
depot = /var/vcap/data/garden/depot
properties-path = /var/vcap/data/garden/props.json
port-pool-properties-path = /var/vcap/data/garden/port-pool-props.json
console-sockets-path = /var/vcap/data/garden/console-sockets
iptables-bin = /var/vcap/packages/iptables/sbin/iptables
iptables-restore-bin = /var/vcap/packages/iptables/sbin/iptables-restore
init-bin = /var/vcap/packages/guardian/bin/init
dadoo-bin = /var/vcap/packages/guardian/bin/dadoo
nstar-bin = /var/vcap/packages/guardian/bin/nstar
tar-bin = /var/vcap/packages/tar/tar
runtime-plugin = /var/vcap/packages/runc/bin/runc
image-plugin = /var/vcap/packages/grootfs/bin/grootfs
image-plugin-extra-arg = --config
image-plugin-extra-arg = /var/vcap/jobs/garden/config/grootfs_config.yml
privileged-image-plugin = /var/vcap/packages/grootfs/bin/grootfs
privileged-image-plugin-extra-arg = --config
privileged-image-plugin-extra-arg = /var/vcap/jobs/garden/config/privileged_grootfs_config.yml
network-plugin = /var/vcap/packages/runc-cni/bin/garden-external-networker
network-plugin-extra-arg = --configFile=/var/vcap/jobs/garden-cni/config/adapter.json
network-plugin-extra-arg = --log-level=info
default-grace-time = 2s
max-containers = 2
allow-host-access = false
destroy-containers-on-startup = false
dns-server = 8.8.8.8
additional-dns-server = 9.9.9.9
additional-host-entry = "10.0.0.1 example.internal"
apparmor = garden-default
no-new-privileges =
cleanup-process-dirs-on-wait = true
default-container-blockio-weight = 100
cpu-quota-per-share = 0
tcp-keepalive-time = 60
tcp-retries2 = 8
metrics-emission-interval = 30s
dropsonde-origin = garden-linux
dropsonde-destination = 127.0.0.1:3457
uid-map-start = 1
gid-map-start = 1

[server.Container Networking]
deny-network = 169.254.169.254/32
"#;

/// The image plugin's path in [`CELL_CONFIG`].
const GROOTFS: &str = "/var/vcap/packages/grootfs/bin/grootfs";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing the config file");
    path.display().to_string()
}

#[tokio::test]
async fn a_cell_config_file_configures_the_server_and_the_command_line_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let grootfs = write(dir.path(), "grootfs", "");
    let config = write(
        dir.path(),
        "config.ini",
        &CELL_CONFIG.replace(GROOTFS, &grootfs),
    );
    let mut options = TestServer::options(Backend::Fake);
    options.global_args = vec!["--config".into(), config];
    // Overrides the file's: were the file's used, the server would not answer here.
    options.extra_args = vec!["--max-containers".into(), "3".into()];
    let server = TestServer::start(options);
    let client = server.client();

    // --max-containers from the command line (3), not the file (2).
    let mut handles = Vec::new();
    for i in 0..3 {
        let handle = format!("cell-{i}");
        client
            .create(ContainerSpec {
                handle: handle.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("create {handle}: {e}"));
        handles.push(handle);
    }
    let refused = client
        .create(ContainerSpec {
            handle: "cell-3".into(),
            ..Default::default()
        })
        .await
        .expect_err("a fourth container is over --max-containers");
    assert!(refused.to_string().contains("max containers"), "{refused}");

    // --default-grace-time from the file: containers created without one expire.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = client.containers(&BTreeMap::new()).await.unwrap();
        if listed.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "containers were not reaped after the file's 2s grace time: {:?}",
            listed
                .iter()
                .map(|c| c.handle().to_string())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Each flag given that Trellis does not act on warned exactly once; implemented ones not.
    let logs = server.logs();
    for flag in [
        "port-pool-properties-path",
        "iptables-bin",
        "runtime-plugin",
        "apparmor",
        "cleanup-process-dirs-on-wait",
        "dropsonde-origin",
    ] {
        let line = format!("--{flag} has no effect here: ");
        assert_eq!(logs.matches(&line).count(), 1, "{line}\n{logs}");
    }
    for flag in [
        "max-containers",
        "default-grace-time",
        "dns-server",
        "deny-network",
        "properties-path",
        "default-container-blockio-weight",
        "cpu-quota-per-share",
        "image-plugin",
        "image-plugin-extra-arg",
        "privileged-image-plugin-extra-arg",
        "network-plugin",
        "network-plugin-extra-arg",
        "tcp-keepalive-time",
    ] {
        assert!(!logs.contains(&format!("--{flag} has no effect")), "{flag}");
    }
}

/// Runs `trellis --config FILE server ...` and returns its exit code and stderr; it must exit
/// by itself.
fn start_failure(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(trellis_tests::binary())
        .args(["--config", config, "server", "--backend", "fake"])
        .args(["--bind-ip", "127.0.0.1", "--bind-port", "0"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .arg("--depot")
        .arg(dir.path().join("depot"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting trellis");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return (status.code(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("trellis started with the invalid config file {config}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_invalid_config_file_stops_the_start_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "invalid-ini-file",
            ":1: malformed key=value (invalid-ini-file)",
        ),
        (
            "[server]\nbind-port = 7777\nno-such-flag = 1\n",
            ":3: unknown option: no-such-flag",
        ),
        (
            "[server]\nbind-port = seven\n",
            ":2: invalid value \"seven\" for bind-port",
        ),
        (
            "[garden]\nbind-port = 7777\n",
            ": could not find option group `garden'",
        ),
        (
            "[server]\ntcp-keepalive-time = -1\n",
            ":2: invalid value \"-1\" for tcp-keepalive-time",
        ),
    ];
    for (i, (text, reason)) in cases.into_iter().enumerate() {
        let config = write(dir.path(), &format!("bad-{i}.ini"), text);
        let (code, stderr) = start_failure(&config);
        assert_eq!(code, Some(2), "{text:?}: {stderr}");
        assert!(
            stderr.contains(&format!("trellis server: {config}{reason}")),
            "{text:?}: {stderr}"
        );
    }
    let missing = dir.path().join("missing.ini").display().to_string();
    let (code, stderr) = start_failure(&missing);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(&format!("cannot read config file {missing}: No such file")),
        "{stderr}"
    );
}
