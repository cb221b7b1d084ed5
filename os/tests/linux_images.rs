//! Images from OCI layouts and from a registry on loopback (Debian's docker-registry), made
//! from the busybox rootfs with umoci (layers, whiteouts, env) and pushed with skopeo.

mod support;

use support::images::{oci_layout, Registry};
use support::*;
use trellis_core::api::ImageRef;

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
    t.host
        .create_cgroup(handle, &Default::default(), false)
        .unwrap();
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

#[test]
fn docker_images_come_from_a_loopback_registry() {
    let t = host("registry");
    std::fs::create_dir_all(&t.base).unwrap();
    let layout = oci_layout(&t.base);
    let registry = Registry::start();
    registry.push(&layout, "v1", "trellis/busybox");
    let uri = registry.uri("trellis/busybox", "v1");
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
