//! Pulling images from a Docker/OCI registry: `docker://[host[:port]]/repo[#tag]`.
//!
//! The manifest (an index resolves to linux/amd64) and config come with `oci-client`; each
//! layer not yet in the cache is downloaded (its digest checked by the client) and unpacked
//! into its own directory, shared with every image that has it. Loopback registries are
//! spoken to over plain HTTP, as Docker does; everything else over HTTPS. Credentials come
//! from the image's username and password.

use super::image::{self, ResolvedImage, UnpackLocks};
use crate::host::{HostError, HostResult};
use crate::layout::Layout;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use trellis_core::api::ImageRef;

/// `docker://[host[:port]]/repo[#tag]` as a registry reference.
pub fn parse(uri: &str) -> HostResult<Reference> {
    let invalid = || {
        HostError::Invalid(format!(
            "invalid image URI {uri:?}: expected docker://[host[:port]]/repo[#tag]"
        ))
    };
    let rest = uri.strip_prefix("docker://").ok_or_else(invalid)?;
    let (host, path) = match rest.strip_prefix('/') {
        Some(path) => ("", path),
        None => rest.split_once('/').ok_or_else(invalid)?,
    };
    let (repo, tag) = match path.split_once('#') {
        Some((repo, tag)) => (repo, tag),
        None => (path, "latest"),
    };
    if repo.is_empty() || tag.is_empty() {
        return Err(invalid());
    }
    let registry = if host.is_empty() { "docker.io" } else { host };
    let repo = if registry == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo.to_string()
    };
    Ok(Reference::with_tag(
        registry.to_string(),
        repo,
        tag.to_string(),
    ))
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => registry.split(':').next().unwrap_or_default(),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub fn resolve(
    layout: &Layout,
    uri: &str,
    image: &ImageRef,
    locks: &UnpackLocks,
) -> HostResult<ResolvedImage> {
    let reference = parse(uri)?;
    let registry = reference.resolve_registry().to_string();
    let protocol = if is_loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        ..Default::default()
    });
    let auth = if image.username.is_empty() && image.password.is_empty() {
        RegistryAuth::Anonymous
    } else {
        RegistryAuth::Basic(image.username.clone(), image.password.clone())
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HostError::io("starting the registry client", e))?;
    let failed = |e: oci_client::errors::OciDistributionError| {
        HostError::Failed(format!("pulling {uri}: {e}"))
    };
    let (manifest, _digest, config) = runtime
        .block_on(client.pull_manifest_and_config(&reference, &auth))
        .map_err(failed)?;
    let mut lowers = Vec::new();
    for layer in &manifest.layers {
        let hex = image::digest_hex(&layer.digest)?.to_string();
        let dest = layout.layer_dir(&hex);
        image::unpack_once(layout, locks, &dest, |tmp| {
            let blob = tmp.with_extension("blob");
            let result = runtime
                .block_on(async {
                    use tokio::io::AsyncWriteExt;
                    let mut file = tokio::fs::File::create(&blob).await?;
                    client
                        .pull_blob(&reference, layer, &mut file)
                        .await
                        .map_err(std::io::Error::other)?;
                    // tokio's File finishes writes in the background unless flushed.
                    file.flush().await
                })
                .map_err(|e| HostError::Failed(format!("pulling layer {hex} of {uri}: {e}")))
                .and_then(|()| {
                    let file = std::fs::File::open(&blob)
                        .map_err(|e| HostError::io("opening a downloaded layer", e))?;
                    image::unpack_layer(Box::new(file), tmp).map_err(|e| {
                        HostError::Failed(format!("unpacking layer {hex} of {uri}: {e}"))
                    })
                });
            let _ = std::fs::remove_file(&blob);
            result
        })?;
        lowers.push(dest);
    }
    if lowers.is_empty() {
        return Err(HostError::Invalid(format!("image {uri} has no layers")));
    }
    lowers.reverse();
    Ok(ResolvedImage {
        lowers,
        env: image::image_env(config.as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_garden_docker_uris() {
        let r = parse("docker:///busybox").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("docker.io", "library/busybox", Some("latest"))
        );
        let r = parse("docker://127.0.0.1:5000/some/repo#1.2").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("127.0.0.1:5000", "some/repo", Some("1.2"))
        );
        assert!(parse("docker://").is_err());
        assert!(
            is_loopback("127.0.0.1:5000")
                && is_loopback("localhost:1")
                && is_loopback("[::1]:5000")
        );
        assert!(!is_loopback("registry.example.com"));
    }
}
