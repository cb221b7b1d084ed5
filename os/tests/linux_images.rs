//! Images from OCI layouts and from a registry on loopback (Debian's docker-registry), made
//! from the busybox rootfs with umoci (layers, whiteouts, env) and pushed with skopeo.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;
use trellis_core::api::ImageRef;
use trellis_os::Host;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An OCI layout with two layers: the busybox rootfs plus env, then a layer that deletes
/// /bin/kill (whiteout), makes /etc opaque-replaced... and adds a file.
fn oci_layout(base: &Path) -> PathBuf {
    let layout = base.join("oci");
    let image = format!("{}:v1", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["insert", "--image", &image])
        .arg(rootfs())
        .arg("/"));
    let extra = base.join("extra");
    std::fs::create_dir_all(extra.join("data")).unwrap();
    std::fs::write(extra.join("data/added"), "second layer\n").unwrap();
    run(Command::new("umoci")
        .args(["insert", "--image", &image])
        .arg(&extra)
        .arg("/"));
    run(Command::new("umoci").args(["insert", "--image", &image, "--whiteout", "/bin/kill"]));
    let opaque_src = base.join("opaque");
    std::fs::create_dir_all(&opaque_src).unwrap();
    std::fs::write(opaque_src.join("only"), "only me\n").unwrap();
    run(Command::new("umoci")
        .args(["insert", "--image", &image, "--opaque"])
        .arg(&opaque_src)
        .arg("/home"));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/from-image",
        "--config.env",
        "IMAGE_VAR=from-the-image",
    ]));
    layout
}

fn check_image(t: &TestHost, handle: &str, uri: &str, username: &str) {
    let rootfs = t
        .host
        .prepare_rootfs(
            handle,
            &ImageRef {
                uri: uri.into(),
                username: username.into(),
                password: if username.is_empty() {
                    String::new()
                } else {
                    "secret".into()
                },
            },
            false,
            &Default::default(),
        )
        .expect("prepare rootfs");
    assert!(
        rootfs
            .image_env
            .contains(&"IMAGE_VAR=from-the-image".to_string()),
        "{:?}",
        rootfs.image_env
    );
    t.host.create_cgroup(handle, &Default::default()).unwrap();
    t.host
        .start_init(handle, &init_config(handle, vec![]))
        .unwrap();
    let (code, out, err) = t.run_with_env(
        handle,
        sh("cat /data/added; test -e /bin/kill && echo kill-still-there; ls /home; echo $IMAGE_VAR"),
        &rootfs.image_env,
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "second layer\nonly\nfrom-the-image\n"),
        "{err}"
    );
}

#[test]
fn oci_layouts_stack_layers_with_whiteouts_and_env() {
    let t = host("oci");
    std::fs::create_dir_all(&t.base).unwrap();
    let layout = oci_layout(&t.base);
    let uri = format!("oci://{}#v1", layout.display());
    check_image(&t, "o1", &uri, "");
    check_image(&t, "o2", &uri, "");
    // Layers are unpacked once and shared.
    let layers = std::fs::read_dir(t.host.layout.images_dir().join("layers"))
        .unwrap()
        .count();
    assert_eq!(layers, 4);
    let err = t
        .host
        .prepare_rootfs(
            "o3",
            &ImageRef {
                uri: format!("oci://{}#nope", layout.display()),
                ..Default::default()
            },
            false,
            &Default::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("no manifest tagged"), "{err}");
    t.destroy("o1");
    t.destroy("o2");
}

struct Registry {
    child: Child,
    port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(base: &Path) -> Registry {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = base.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            base.join("registry-data").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting docker-registry (scripts/install-deps)");
    let registry = Registry { child, port };
    eventually("the registry to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    registry
}

#[test]
fn docker_images_come_from_a_loopback_registry() {
    let t = host("registry");
    std::fs::create_dir_all(&t.base).unwrap();
    let layout = oci_layout(&t.base);
    let registry = start_registry(&t.base);
    run(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://127.0.0.1:{}/trellis/busybox:v1", registry.port),
    ]));
    let uri = format!("docker://127.0.0.1:{}/trellis/busybox#v1", registry.port);
    check_image(&t, "d1", &uri, "");
    // Credentials are accepted (this registry needs none) and the layers come from the cache.
    check_image(&t, "d2", &uri, "someone");
    let err = t
        .host
        .prepare_rootfs(
            "d3",
            &ImageRef {
                uri: format!("docker://127.0.0.1:{}/trellis/missing", registry.port),
                ..Default::default()
            },
            false,
            &Default::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("pulling"), "{err}");
    t.destroy("d1");
    t.destroy("d2");
}
