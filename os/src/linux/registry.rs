//! Pulling images from a Docker/OCI registry: `docker://[host[:port]]/repo[#tag]`.
//!
//! The manifest (an index resolves to linux/amd64) and config come with `oci-client` (over
//! reqwest and rustls); each layer not yet in the cache is downloaded (its digest checked by the
//! client) and unpacked into its own directory, shared with every image that has it.
//! Credentials come from the image's username and password.
//!
//! Which registry and how to speak to it follow gdn (`--docker-registry`,
//! `--insecure-docker-registry`; garden-shed's fetcher, which grootfs kept the rules of):
//!
//! - a URI without a host (`docker:///busybox`) names the default registry, Docker Hub's
//!   `registry-1.docker.io` unless configured; on Docker Hub a repository without a `/` is an
//!   official image, under `library/`;
//! - every registry is spoken to over HTTPS with verified certificates, unless it is listed as
//!   insecure (its `host[:port]` exactly as in the URI, or a CIDR holding its address): then an
//!   unverified certificate is accepted, and if HTTPS cannot be spoken at all, plain HTTP is
//!   tried. Loopback gets no exception (gdn gives it none);
//! - requests go through the proxies named by `HTTPS_PROXY`/`HTTP_PROXY` (or lowercase),
//!   except for hosts in `NO_PROXY` and loopback, as Go's `ProxyFromEnvironment` (and
//!   `ALL_PROXY` for either when unset, as reqwest reads it).

use super::image::{self, ResolvedImage, UnpackLocks};
use crate::host::{HostError, HostResult};
use crate::layout::Layout;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use trellis_core::api::ImageRef;
use trellis_core::EffectErrorKind;

/// Docker Hub's registry endpoint: gdn's default `--docker-registry`.
pub const DOCKER_HUB: &str = "registry-1.docker.io";

/// Where `docker://` images come from and how registries are spoken to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// The registry (`host[:port]`) of URIs without a host.
    pub default_registry: String,
    /// Registries that may be spoken to over plain HTTP or unverified TLS: `host[:port]` as
    /// written in image URIs, or a CIDR holding the registry's address.
    pub insecure: Vec<String>,
    /// The proxies requests go through.
    pub proxy: ProxySettings,
}

impl Default for RegistrySettings {
    /// Docker Hub, nothing insecure, the proxies of this process's environment.
    fn default() -> Self {
        RegistrySettings {
            default_registry: DOCKER_HUB.to_string(),
            insecure: Vec::new(),
            proxy: ProxySettings::from_env(),
        }
    }
}

/// The proxy variables, as Go's `http.ProxyFromEnvironment` reads them, plus `ALL_PROXY` as
/// the last resort for both schemes: reqwest reads that one by itself when given no proxy, so
/// it is taken here too, where loopback is excluded from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// For `https://` requests (`HTTPS_PROXY`).
    pub https: Option<String>,
    /// For `http://` requests (`HTTP_PROXY`).
    pub http: Option<String>,
    /// Hosts, domains and CIDRs reached directly (`NO_PROXY`); loopback always is.
    pub no_proxy: String,
}

/// Never proxied, whatever `NO_PROXY` says (as Go).
const LOOPBACK: &str = "localhost,127.0.0.0/8,::1";

impl ProxySettings {
    /// From this process's environment.
    pub fn from_env() -> ProxySettings {
        ProxySettings::from_lookup(|name| std::env::var(name).ok())
    }

    /// From variables looked up by `get`: the uppercase name first, then the lowercase one;
    /// empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> ProxySettings {
        let var = |name: &str| {
            get(name)
                .filter(|v| !v.is_empty())
                .or_else(|| get(&name.to_lowercase()).filter(|v| !v.is_empty()))
        };
        let no_proxy = match var("NO_PROXY") {
            Some(list) => format!("{list},{LOOPBACK}"),
            None => LOOPBACK.to_string(),
        };
        ProxySettings {
            https: var("HTTPS_PROXY").or_else(|| var("ALL_PROXY")),
            http: var("HTTP_PROXY").or_else(|| var("ALL_PROXY")),
            no_proxy,
        }
    }
}

/// Why a `docker://` image could not be had. Each names the image (`docker://registry/repo#tag`,
/// with the registry a hostless URI resolved to).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image URI {uri:?}: expected docker://[host[:port]]/repo[#tag]")]
    InvalidUri { uri: String },
    #[error("pulling {image}: {cause}")]
    Pull { image: String, cause: PullError },
    #[error("pulling {image}: layer {digest}: {cause}")]
    Layer {
        image: String,
        digest: String,
        cause: PullError,
    },
    #[error("pulling {image}: unpacking layer {digest}: {source}")]
    Unpack {
        image: String,
        digest: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pulling {image}: the image has no layers")]
    NoLayers { image: String },
    #[error("pulling {image}: unsupported layer digest {digest:?}")]
    BadDigest { image: String, digest: String },
    #[error("pulling {image}: starting the registry client: {source}")]
    Runtime {
        image: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<RegistryError> for HostError {
    fn from(e: RegistryError) -> HostError {
        HostError::Component {
            kind: match &e {
                // The request named no image this host could look for.
                RegistryError::InvalidUri { .. } => EffectErrorKind::InvalidRequest,
                _ => EffectErrorKind::Host,
            },
            source: Box::new(e),
        }
    }
}

/// What went wrong talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("manifest not found (404): {detail}")]
    NotFound { detail: String },
    #[error("not authorized (401): {detail}")]
    Unauthorized { detail: String },
    #[error("the registry answered {code}: {message}")]
    Status { code: u16, message: String },
    #[error(
        "{registry} could not be spoken to over verified HTTPS ({cause}); it is not listed in \
         --insecure-docker-registry, so plain HTTP and unverified TLS are not tried"
    )]
    NotSecure { registry: String, cause: String },
    #[error("cannot reach {registry}: {cause}")]
    Unreachable { registry: String, cause: String },
    #[error("{0}")]
    Registry(String),
    #[error("writing the download: {0}")]
    Io(#[source] std::io::Error),
}

/// An image to pull: where from and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host[:port]`.
    pub registry: String,
    /// As the registry names it (`library/` added for official Docker Hub images).
    pub repository: String,
    pub tag: String,
    /// `docker://registry/repo#tag`, for messages.
    pub image: String,
}

impl Target {
    fn reference(&self) -> Reference {
        Reference::with_tag(
            self.registry.clone(),
            self.repository.clone(),
            self.tag.clone(),
        )
    }
}

fn is_docker_hub(registry: &str) -> bool {
    matches!(registry, DOCKER_HUB | "docker.io" | "index.docker.io")
}

/// `docker://[host[:port]]/repo[#tag]`, the default registry standing in for a missing host.
pub fn parse(uri: &str, settings: &RegistrySettings) -> Result<Target, RegistryError> {
    let invalid = || RegistryError::InvalidUri {
        uri: uri.to_string(),
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
    let registry = if host.is_empty() {
        settings.default_registry.as_str()
    } else {
        host
    };
    let repository = if is_docker_hub(registry) && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo.to_string()
    };
    Ok(Target {
        registry: registry.to_string(),
        repository,
        tag: tag.to_string(),
        image: format!("docker://{registry}/{repo}#{tag}"),
    })
}

/// The host part of `host[:port]` (`[v6]:port` too).
fn host_of(registry: &str) -> &str {
    match registry.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => match registry.rsplit_once(':') {
            Some((host, port))
                if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                host
            }
            _ => registry,
        },
    }
}

/// Whether `registry` is listed insecure: exactly, or by a CIDR holding its address.
pub fn is_insecure(registry: &str, insecure: &[String]) -> bool {
    let ip = host_of(registry).parse::<std::net::IpAddr>().ok();
    insecure.iter().any(|entry| {
        entry == registry
            || ip.is_some_and(|ip| {
                entry
                    .parse::<ipnetwork::IpNetwork>()
                    .is_ok_and(|net| entry.contains('/') && net.contains(ip))
            })
    })
}

/// How one attempt speaks to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// HTTPS, certificates verified.
    Verified,
    /// HTTPS, any certificate (insecure registries only).
    Unverified,
    /// Plain HTTP (insecure registries only).
    Plain,
}

fn client_config(target: &Target, transport: Transport, proxy: &ProxySettings) -> ClientConfig {
    ClientConfig {
        protocol: match transport {
            Transport::Plain => ClientProtocol::HttpsExcept(vec![target.registry.clone()]),
            Transport::Verified | Transport::Unverified => ClientProtocol::Https,
        },
        accept_invalid_certificates: transport == Transport::Unverified,
        https_proxy: proxy.https.clone(),
        http_proxy: proxy.http.clone(),
        no_proxy: Some(proxy.no_proxy.clone()),
        ..Default::default()
    }
}

/// The error with every cause in its chain (reqwest keeps the useful part in `source`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Whether the request never got an answer (connection, TLS): the case for trying plain HTTP.
fn is_transport(e: &OciDistributionError) -> bool {
    matches!(e, OciDistributionError::RequestError(r) if !r.is_status() && !r.is_decode())
}

/// Whether TLS itself failed (rustls reports through `io::ErrorKind::InvalidData`, which the
/// connector wraps in another `io::Error`): a plain HTTP server, or a certificate that does not
/// verify.
fn is_tls_failure(e: &OciDistributionError) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        // An io::Error's `source` skips the error it wraps; look at that one too.
        let mut io = s.downcast_ref::<std::io::Error>();
        while let Some(e) = io {
            if e.kind() == std::io::ErrorKind::InvalidData {
                return true;
            }
            io = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<std::io::Error>());
        }
        source = s.source();
    }
    false
}

/// `secure_only`: the registry is not listed insecure, so a TLS failure says why it was refused.
fn pull_error(e: OciDistributionError, target: &Target, secure_only: bool) -> PullError {
    match e {
        OciDistributionError::ImageManifestNotFoundError(detail) => PullError::NotFound { detail },
        OciDistributionError::RegistryError { envelope, url } => {
            let detail = format!(
                "{} ({url})",
                envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            let code = envelope.errors.first().map(|e| &e.code);
            match code {
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::BlobUnknown,
                ) => PullError::NotFound { detail },
                Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => {
                    PullError::Unauthorized { detail }
                }
                _ => PullError::Registry(detail),
            }
        }
        OciDistributionError::UnauthorizedError { url } => PullError::Unauthorized { detail: url },
        OciDistributionError::AuthenticationFailure(detail) => PullError::Unauthorized { detail },
        OciDistributionError::ServerError { code: 404, url, .. } => {
            PullError::NotFound { detail: url }
        }
        OciDistributionError::ServerError { code, message, url } => PullError::Status {
            code,
            message: format!("{} ({url})", message.trim()),
        },
        e if secure_only && is_transport(&e) && is_tls_failure(&e) => PullError::NotSecure {
            registry: target.registry.clone(),
            cause: chain(&e),
        },
        e if is_transport(&e) => PullError::Unreachable {
            registry: target.registry.clone(),
            cause: chain(&e),
        },
        e => PullError::Registry(chain(&e)),
    }
}

pub fn resolve(
    layout: &Layout,
    uri: &str,
    image: &ImageRef,
    locks: &UnpackLocks,
    settings: &RegistrySettings,
) -> HostResult<ResolvedImage> {
    let target = parse(uri, settings)?;
    let reference = target.reference();
    let insecure = is_insecure(&target.registry, &settings.insecure);
    let auth = if image.username.is_empty() && image.password.is_empty() {
        RegistryAuth::Anonymous
    } else {
        RegistryAuth::Basic(image.username.clone(), image.password.clone())
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| RegistryError::Runtime {
            image: target.image.clone(),
            source,
        })?;
    // An insecure registry gets HTTPS with any certificate first, then plain HTTP if HTTPS
    // could not be spoken at all (gdn's order).
    let transports: &[Transport] = if insecure {
        &[Transport::Unverified, Transport::Plain]
    } else {
        &[Transport::Verified]
    };
    let mut attempt = 0;
    let (client, manifest, config) = loop {
        let client = Client::new(client_config(&target, transports[attempt], &settings.proxy));
        match runtime.block_on(client.pull_manifest_and_config(&reference, &auth)) {
            Ok((manifest, _digest, config)) => break (client, manifest, config),
            Err(e) if is_transport(&e) && attempt + 1 < transports.len() => attempt += 1,
            Err(e) => {
                return Err(RegistryError::Pull {
                    image: target.image.clone(),
                    cause: pull_error(e, &target, !insecure),
                }
                .into())
            }
        }
    };
    let mut lowers = Vec::new();
    for layer in &manifest.layers {
        let hex = image::digest_hex(&layer.digest)
            .map_err(|_| RegistryError::BadDigest {
                image: target.image.clone(),
                digest: layer.digest.clone(),
            })?
            .to_string();
        let dest = layout.layer_dir(&hex);
        let layer_error = |cause| RegistryError::Layer {
            image: target.image.clone(),
            digest: layer.digest.clone(),
            cause,
        };
        image::unpack_once(layout, locks, &dest, |tmp| {
            let blob = tmp.with_extension("blob");
            let result = runtime
                .block_on(async {
                    use tokio::io::AsyncWriteExt;
                    let mut file = tokio::fs::File::create(&blob)
                        .await
                        .map_err(|e| layer_error(PullError::Io(e)))?;
                    client
                        .pull_blob(&reference, layer, &mut file)
                        .await
                        .map_err(|e| layer_error(pull_error(e, &target, !insecure)))?;
                    // tokio's File finishes writes in the background unless flushed.
                    file.flush()
                        .await
                        .map_err(|e| layer_error(PullError::Io(e)))
                })
                .and_then(|()| {
                    let file =
                        std::fs::File::open(&blob).map_err(|e| layer_error(PullError::Io(e)))?;
                    image::unpack_layer(Box::new(file), tmp).map_err(|source| {
                        RegistryError::Unpack {
                            image: target.image.clone(),
                            digest: layer.digest.clone(),
                            source,
                        }
                    })
                });
            let _ = std::fs::remove_file(&blob);
            result.map_err(HostError::from)
        })?;
        lowers.push(dest);
    }
    if lowers.is_empty() {
        return Err(RegistryError::NoLayers {
            image: target.image.clone(),
        }
        .into());
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
    fn a_uri_naming_no_image_is_the_request_s_fault_a_failed_pull_the_host_s() {
        let bad = HostError::from(RegistryError::InvalidUri {
            uri: "docker:///".into(),
        });
        assert_eq!(bad.effect_kind(), EffectErrorKind::InvalidRequest);
        assert!(bad.to_string().contains("invalid image URI"), "{bad}");
        let failed = HostError::from(RegistryError::NoLayers {
            image: "127.0.0.1:5000/x".into(),
        });
        assert_eq!(failed.effect_kind(), EffectErrorKind::Host);
    }

    fn settings(default: &str, insecure: &[&str]) -> RegistrySettings {
        RegistrySettings {
            default_registry: default.into(),
            insecure: insecure.iter().map(|s| s.to_string()).collect(),
            proxy: ProxySettings::default(),
        }
    }

    #[test]
    fn garden_docker_uris_name_a_registry_repository_and_tag() {
        let hub = RegistrySettings::default();
        let t = parse("docker:///busybox", &hub).unwrap();
        assert_eq!(
            (t.registry.as_str(), t.repository.as_str(), t.tag.as_str()),
            (DOCKER_HUB, "library/busybox", "latest")
        );
        assert_eq!(t.image, "docker://registry-1.docker.io/busybox#latest");
        let t = parse("docker:///cfgarden/preexisting_users#v1", &hub).unwrap();
        assert_eq!(t.repository, "cfgarden/preexisting_users");
        let t = parse("docker://127.0.0.1:5000/some/repo#1.2", &hub).unwrap();
        assert_eq!(
            (t.registry.as_str(), t.repository.as_str(), t.tag.as_str()),
            ("127.0.0.1:5000", "some/repo", "1.2")
        );
        // The configured default registry stands in for a missing host; only Docker Hub keeps
        // official images under library/.
        let local = settings("127.0.0.1:5000", &[]);
        let t = parse("docker:///busybox#1.37.0", &local).unwrap();
        assert_eq!(
            (t.registry.as_str(), t.repository.as_str(), t.image.as_str()),
            (
                "127.0.0.1:5000",
                "busybox",
                "docker://127.0.0.1:5000/busybox#1.37.0"
            )
        );
        for bad in [
            "docker://",
            "docker:///",
            "docker:///x#",
            "busybox",
            "docker://host",
        ] {
            assert!(
                matches!(parse(bad, &hub), Err(RegistryError::InvalidUri { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn insecure_registries_match_exactly_or_by_cidr() {
        let list: Vec<String> = ["10.0.0.5:5000", "192.168.12.0/24", "registry.local"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(is_insecure("10.0.0.5:5000", &list));
        assert!(!is_insecure("10.0.0.5:5001", &list));
        assert!(!is_insecure("10.0.0.5", &list));
        assert!(is_insecure("192.168.12.30:5000", &list));
        assert!(is_insecure("192.168.12.30", &list));
        assert!(!is_insecure("192.168.13.30:5000", &list));
        assert!(is_insecure("registry.local", &list));
        assert!(!is_insecure("registry.local:443", &list));
        // Loopback is no exception.
        assert!(!is_insecure("127.0.0.1:5000", &list));
        assert!(is_insecure("[::1]:5000", &["::1/128".to_string()]));
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert_eq!(host_of("localhost:5000"), "localhost");
    }

    #[test]
    fn the_client_is_configured_from_the_proxy_variables() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            ProxySettings::from_lookup(move |name| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            })
        };
        let proxy = env(&[
            ("HTTPS_PROXY", "http://proxy.example:3128"),
            ("http_proxy", "http://lower.example:8080"),
            ("NO_PROXY", "registry.internal,10.0.0.0/8"),
            ("no_proxy", "ignored.example"),
        ]);
        assert_eq!(
            proxy,
            ProxySettings {
                https: Some("http://proxy.example:3128".into()),
                http: Some("http://lower.example:8080".into()),
                no_proxy: format!("registry.internal,10.0.0.0/8,{LOOPBACK}"),
            }
        );
        // Uppercase wins; empty counts as unset.
        let proxy = env(&[
            ("HTTPS_PROXY", ""),
            ("https_proxy", "http://lower.example:1"),
            ("HTTP_PROXY", "http://upper.example:2"),
            ("http_proxy", "http://lower.example:2"),
        ]);
        assert_eq!(proxy.https.as_deref(), Some("http://lower.example:1"));
        assert_eq!(proxy.http.as_deref(), Some("http://upper.example:2"));
        assert_eq!(proxy.no_proxy, LOOPBACK);
        let proxy = env(&[
            ("all_proxy", "http://all.example:3"),
            ("HTTP_PROXY", "http://upper.example:2"),
        ]);
        assert_eq!(proxy.https.as_deref(), Some("http://all.example:3"));
        assert_eq!(proxy.http.as_deref(), Some("http://upper.example:2"));
        assert_eq!(
            env(&[]),
            ProxySettings {
                https: None,
                http: None,
                no_proxy: LOOPBACK.into(),
            }
        );

        let target = parse(
            "docker://registry.example/r#t",
            &RegistrySettings::default(),
        )
        .unwrap();
        let proxy = env(&[
            ("HTTPS_PROXY", "http://proxy.example:3128"),
            ("NO_PROXY", "other.example"),
        ]);
        let config = client_config(&target, Transport::Verified, &proxy);
        assert_eq!(
            config.https_proxy.as_deref(),
            Some("http://proxy.example:3128")
        );
        assert_eq!(config.http_proxy, None);
        assert_eq!(
            config.no_proxy.as_deref(),
            Some(format!("other.example,{LOOPBACK}").as_str())
        );
        assert!(matches!(config.protocol, ClientProtocol::Https));
        assert!(!config.accept_invalid_certificates);
        let config = client_config(&target, Transport::Unverified, &proxy);
        assert!(matches!(config.protocol, ClientProtocol::Https));
        assert!(config.accept_invalid_certificates);
        let config = client_config(&target, Transport::Plain, &proxy);
        assert!(
            matches!(&config.protocol, ClientProtocol::HttpsExcept(hosts) if hosts == &["registry.example".to_string()])
        );
        // The client builds with them (reqwest parses the proxy URLs).
        Client::try_from(config).expect("a client with proxies");
    }

    /// On loopback only: a plain HTTP server asked for verified HTTPS is refused for being
    /// insecure; a port nothing listens on is unreachable, whatever the list says.
    #[test]
    fn failures_to_connect_say_why() {
        use std::io::{Read, Write};
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let plain_port = plain.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in plain.incoming() {
                let Ok(mut stream) = stream else { return };
                let _ = stream.read(&mut [0u8; 1024]);
                let _ = stream.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
            }
        });
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let attempt = |port: u16| {
            let target = parse(
                &format!("docker://127.0.0.1:{port}/r#t"),
                &RegistrySettings::default(),
            )
            .unwrap();
            // The environment's proxies, if any, are never used for loopback.
            let client = Client::new(client_config(
                &target,
                Transport::Verified,
                &ProxySettings::from_env(),
            ));
            let e = runtime
                .block_on(
                    client.pull_manifest_and_config(&target.reference(), &RegistryAuth::Anonymous),
                )
                .unwrap_err();
            pull_error(e, &target, true)
        };
        let refused = attempt(plain_port);
        assert!(
            matches!(&refused, PullError::NotSecure { registry, .. } if *registry == format!("127.0.0.1:{plain_port}")),
            "{refused}"
        );
        assert!(refused.to_string().contains("--insecure-docker-registry"));
        let unreachable = attempt(closed_port);
        assert!(
            matches!(&unreachable, PullError::Unreachable { cause, .. } if cause.contains("Connection refused")),
            "{unreachable}"
        );
    }
}
