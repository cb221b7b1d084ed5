//! Images over HTTP (as root): a rootfs directory, a tarball, an OCI layout and a Docker
//! registry on loopback; bad image URIs are clear errors that leave nothing behind.

mod linux_support;

use linux_support::*;
use trellis_client::Error;
use trellis_core::api::{ContainerSpec, ImageRef};
use trellis_tests::images::{
    busybox_rootfs, busybox_tar, oci_layout, stand_in_images, Registry, IMAGE_VAR,
};
use trellis_tests::{ServerOptions, TestServer};

/// The layered image: the whiteout, the opaque directory and the image's env all show.
async fn check_layered(uri: &str) {
    let c = create(with_image(uri)).await;
    let out = ok(
        &c,
        "cat /data/added; test -e /bin/kill && echo kill-still-there; ls /home; echo $IMAGE_VAR; echo $PATH",
    )
    .await;
    assert_eq!(
        out,
        format!(
            "second layer\nonly\n{}\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/from-image\n",
            IMAGE_VAR.split_once('=').unwrap().1
        )
    );
    // Copy-on-write: a change in one container is not seen by the image or another one.
    ok(&c, "echo changed > /data/added").await;
    let other = create(with_image(uri)).await;
    assert_eq!(ok(&other, "cat /data/added").await, "second layer\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rootfs_directory_and_a_tarball_as_images() {
    for uri in [
        busybox_rootfs().display().to_string(),
        format!("raw://{}", busybox_rootfs().display()),
        busybox_tar().display().to_string(),
    ] {
        let c = create(with_image(&uri)).await;
        assert_eq!(
            ok(&c, "echo hi > /tmp/x && cat /tmp/x").await,
            "hi\n",
            "{uri}"
        );
    }
    // The image itself is never written to.
    assert!(!busybox_rootfs().join("tmp/x").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_layouts_with_layers_whiteouts_and_env() {
    let base = tempfile::tempdir().expect("a directory");
    let layout = oci_layout(base.path());
    check_layered(&format!("oci://{}#v1", layout.display())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_images_from_a_loopback_registry() {
    let base = tempfile::tempdir().expect("a directory");
    let layout = oci_layout(base.path());
    let registry = Registry::start();
    registry.push(&layout, "v1", "trellis/busybox");
    check_layered(&registry.uri("trellis/busybox", "v1")).await;
    // Credentials are passed along (this registry needs none).
    let c = create(ContainerSpec {
        image: ImageRef {
            uri: registry.uri("trellis/busybox", "v1"),
            username: "someone".into(),
            password: "secret".into(),
        },
        ..Default::default()
    })
    .await;
    assert_eq!(ok(&c, "cat /data/added").await, "second layer\n");
    let missing = registry.uri("trellis/missing", "v1");
    let err = client()
        .create(ContainerSpec {
            handle: "lx-missing-image".into(),
            ..with_image(&missing)
        })
        .await
        .expect_err("an image the registry lacks");
    assert!(err.to_string().contains("trellis/missing"), "{err}");
    assert_nothing_left("lx-missing-image").await;
}

async fn assert_nothing_left(handle: &str) {
    assert_nothing_left_on(server(), handle).await;
}

async fn assert_nothing_left_on(server: &TestServer, handle: &str) {
    match server.client().container(handle).info().await {
        Err(Error::ContainerNotFound { .. }) => {}
        other => panic!("{handle} is still known: {other:?}"),
    }
    assert!(
        !server.depot().join(handle).exists(),
        "{handle}'s directory is left"
    );
}

/// A Linux server started with `flags` (and none of the shared server's).
fn server_with(flags: &[&str]) -> TestServer {
    TestServer::start(ServerOptions {
        extra_args: flags.iter().map(|f| f.to_string()).collect(),
        ..TestServer::linux_options()
    })
}

/// A server whose `docker:///` images come from `registry`, listed as insecure (plain HTTP).
fn server_pulling_from(registry: &Registry) -> TestServer {
    let addr = registry.addr();
    server_with(&[
        "--docker-registry",
        &addr,
        "--insecure-docker-registry",
        &addr,
    ])
}

/// gdn's --docker-registry and --insecure-docker-registry, against a plain-HTTP registry on
/// loopback (nothing is sent anywhere else): `docker:///repo#tag` comes from the configured
/// registry when it is listed insecure; not listed, it is refused with the reason and nothing
/// is left; an image the registry lacks is named with the cause.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_registry_and_the_insecure_list() {
    let base = tempfile::tempdir().expect("a directory");
    let layout = oci_layout(base.path());
    let registry = Registry::start();
    registry.push(&layout, "v1", "busybox");
    let addr = registry.addr();

    let listed = server_pulling_from(&registry);
    let client = listed.client();
    for uri in [
        "docker:///busybox#v1".to_string(),
        registry.uri("busybox", "v1"),
    ] {
        let c = client.create(with_image(&uri)).await.expect(&uri);
        assert_eq!(ok(&c, "cat /data/added").await, "second layer\n", "{uri}");
        client.destroy(c.handle()).await.expect("destroy");
    }
    for (uri, named) in [
        ("docker:///trellis/missing#v1", "trellis/missing#v1"),
        ("docker:///busybox#no-such-tag", "busybox#no-such-tag"),
    ] {
        let err = client
            .create(ContainerSpec {
                handle: "lx-unknown-image".into(),
                ..with_image(uri)
            })
            .await
            .expect_err(uri);
        let expected = format!("pulling docker://{addr}/{named}: manifest not found (404)");
        assert!(err.to_string().contains(&expected), "{uri}: {err}");
        assert_nothing_left_on(&listed, "lx-unknown-image").await;
    }
    drop(listed);

    // The same registry, not listed: only verified HTTPS is allowed, and it speaks plain HTTP.
    let unlisted = server_with(&["--docker-registry", &addr]);
    for uri in [
        "docker:///busybox#v1".to_string(),
        registry.uri("busybox", "v1"),
    ] {
        let err = unlisted
            .client()
            .create(ContainerSpec {
                handle: "lx-insecure-refused".into(),
                ..with_image(&uri)
            })
            .await
            .expect_err(&uri);
        let err = err.to_string();
        assert!(
            err.contains(&format!("pulling docker://{addr}/busybox#v1: {addr}"))
                && err.contains("not listed in --insecure-docker-registry"),
            "{uri}: {err}"
        );
        assert_nothing_left_on(&unlisted, "lx-insecure-refused").await;
    }
    let layers = unlisted.layout().images_dir().join("layers");
    assert!(
        std::fs::read_dir(&layers).map_or(true, |mut d| d.next().is_none()),
        "a refused pull left layers in {}",
        layers.display()
    );
}

/// The stand-ins for GATS's Docker Hub images (scripts/stand-in-registry), pulled by their
/// Docker Hub names from the configured registry: files owned by an image user stay theirs in
/// an unprivileged (uid-shifted) container, setuid bits survive, an opaque whiteout hides the
/// layer below, and the image's env is the process env.
#[tokio::test(flavor = "multi_thread")]
async fn gats_stand_in_images_from_the_default_registry() {
    let base = tempfile::tempdir().expect("a directory");
    let layout = stand_in_images(base.path(), &["preexisting-users", "garden-rootfs"]);
    let registry = Registry::start();
    registry.push_stand_ins(&layout, &["preexisting-users", "garden-rootfs"]);
    let server = server_pulling_from(&registry);
    let client = server.client();

    let users = client
        .create(with_image("docker:///cfgarden/preexisting_users"))
        .await
        .expect("create from cfgarden/preexisting_users");
    let alice = run(
        &users,
        sh_as(
            "alice",
            "stat -c '%U %n' /home/alice /home/alice/alicesfile /bin/busybox; touch /home/alice/new && echo wrote",
        ),
    )
    .await;
    assert_eq!(
        alice.stdout, "alice /home/alice\nalice /home/alice/alicesfile\nroot /bin/busybox\nwrote\n",
        "{alice:?}"
    );
    assert_eq!(
        ok(&users, "cat /.foo").await,
        "this is a pre-existing dotfile\n"
    );
    client.destroy(users.handle()).await.expect("destroy");

    let rootfs = client
        .create(with_image("docker:///cloudfoundry/garden-rootfs"))
        .await
        .expect("create from cloudfoundry/garden-rootfs");
    let out = run(
        &rootfs,
        sh_as(
            "alice",
            "id -u; id -G; stat -c %A /bin/usemem-with-setuid; ls -A /test /test/foo; echo $TEST; echo $PATH",
        ),
    )
    .await;
    assert_eq!(
        out.stdout,
        "1001\n1010 1011\n-rwsr-xr-x\n/test:\nfoo\n\n/test/foo:\n\
         second-test-from-dockerfile:test-from-dockerfile\n\
         /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/bin:/from-dockerfile\n",
        "{out:?}"
    );
    client.destroy(rootfs.handle()).await.expect("destroy");
}

/// A private repository behind Docker Hub's token authentication (GATS R4, R5): the image's
/// username and password get a token for it and the pull works; without credentials, or with a
/// wrong password, creating fails with an error naming the image and the refusal, and nothing
/// is left.
#[tokio::test(flavor = "multi_thread")]
async fn a_private_image_needs_the_right_credentials() {
    let base = tempfile::tempdir().expect("a directory");
    let layout = stand_in_images(base.path(), &["private-image-test"]);
    let registry = Registry::start();
    registry.push_stand_ins(&layout, &["private-image-test"]);
    let (username, password) = registry.credentials();
    let server = server_pulling_from(&registry);
    let client = server.client();
    let image = "docker:///cloudfoundry/garden-private-image-test";

    for (i, (username, password)) in [
        (String::new(), String::new()),
        (username.clone(), format!("not-{password}")),
    ]
    .into_iter()
    .enumerate()
    {
        let handle = format!("lx-private-refused-{i}");
        let mut spec = with_image(image);
        spec.handle = handle.clone();
        spec.image.username = username;
        spec.image.password = password;
        let err = client.create(spec).await.expect_err("a refused pull");
        let text = err.to_string();
        assert!(
            text.contains("cloudfoundry/garden-private-image-test")
                && text.contains("not authorized"),
            "{text}"
        );
        assert_nothing_left_on(&server, &handle).await;
    }

    let mut spec = with_image(image);
    spec.image.username = username;
    spec.image.password = password;
    let c = client
        .create(spec)
        .await
        .expect("create with the right credentials");
    assert_eq!(ok(&c, "echo pulled").await, "pulled\n");
    client.destroy(c.handle()).await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_image_uris_are_clear_errors() {
    let base = tempfile::tempdir().expect("a directory");
    let not_an_archive = base.path().join("not-a-tar");
    std::fs::write(&not_an_archive, "this is not a tar file").unwrap();
    // A port nothing listens on: the pull fails at once, on loopback.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cases = [
        ("/no/such/rootfs".to_string(), "/no/such/rootfs"),
        ("ftp://example/image".to_string(), "ftp"),
        (not_an_archive.display().to_string(), "not-a-tar"),
        (
            format!("oci://{}#v1", base.path().join("nope").display()),
            "nope",
        ),
        (format!("docker://127.0.0.1:{closed_port}/x/y#v1"), "x/y"),
    ];
    for (i, (uri, mention)) in cases.iter().enumerate() {
        let handle = format!("lx-bad-image-{i}");
        let err = client()
            .create(ContainerSpec {
                handle: handle.clone(),
                ..with_image(uri)
            })
            .await
            .expect_err(uri);
        assert!(err.to_string().contains(mention), "{uri}: {err}");
        assert_nothing_left(&handle).await;
    }
}
