//! `--properties-path`: where the container records (properties, port mappings, limits) live,
//! across restarts (Linux backend, as root).

use std::collections::BTreeMap;
use std::path::Path;
use trellis_core::api::ContainerSpec;
use trellis_tests::TestServer;

/// Every file under `dir` whose contents mention `needle`.
fn files_mentioning(dir: &Path, needle: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| std::fs::read_to_string(p).is_ok_and(|text| text.contains(needle)))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn records_live_in_the_properties_path_and_bring_containers_back_after_a_restart() {
    let records = tempfile::tempdir().expect("tempdir");
    let records_dir = records.path().join("props");
    let mut options = TestServer::linux_options();
    options.extra_args.extend([
        "--properties-path".into(),
        records_dir.display().to_string(),
    ]);
    let mut server = TestServer::start(options);
    let client = server.client();
    let c = client
        .create(ContainerSpec {
            handle: "kept".into(),
            properties: [("colour".to_string(), "ultramarine".to_string())].into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let (host_port, _) = c.net_in(0, 8080).await.expect("net in");

    assert_eq!(
        files_mentioning(&records_dir, "ultramarine").len(),
        1,
        "one record in {}",
        records_dir.display()
    );
    assert!(
        files_mentioning(&server.dir().join("state/records"), "ultramarine").is_empty(),
        "nothing in the default records directory"
    );

    server.terminate();
    server.restart();
    let client = server.client();
    let c = client.container("kept");
    let info = c.info().await.expect("info");
    assert_eq!(
        info.properties
            .unwrap_or_default()
            .get("colour")
            .map(String::as_str),
        Some("ultramarine")
    );
    let mapped: Vec<u32> = info
        .mapped_ports
        .unwrap_or_default()
        .iter()
        .map(|m| m.host_port)
        .collect();
    assert_eq!(mapped, [host_port]);
    // The port pool came back from the record: the port is not handed out again.
    let other = client
        .create(ContainerSpec {
            handle: "other".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let (other_port, _) = other.net_in(0, 8080).await.expect("net in");
    assert_ne!(other_port, host_port);
    let filter: BTreeMap<String, String> =
        [("colour".to_string(), "ultramarine".to_string())].into();
    let found = client.containers(&filter).await.expect("list");
    assert_eq!(found.len(), 1);
}

#[test]
fn a_file_at_the_properties_path_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("props.json");
    std::fs::write(&file, "{}").expect("write");
    let output = std::process::Command::new(trellis_tests::binary())
        .args(["server", "--backend", "linux"])
        .arg("--depot")
        .arg(dir.path().join("depot"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .arg("--properties-path")
        .arg(&file)
        .args(["--bind-ip", "127.0.0.1", "--bind-port", "0"])
        .output()
        .expect("run trellis");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("props.json"), "{stderr}");
}
