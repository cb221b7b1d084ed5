//! Images: tar rootfses unpacked once, and layered images (from a registry or an OCI image
//! layout on disk) unpacked one directory per layer, whiteouts turned into overlayfs form
//! (`.wh.name` -> a 0/0 character device, `.wh..wh..opq` -> `trusted.overlay.opaque=y`), so
//! the layers stack as overlay lower dirs and are shared by every image that uses them.

use crate::host::{HostError, HostResult};
use crate::layout::Layout;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What a container's overlay is made of.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// Overlay lower dirs, topmost first.
    pub lowers: Vec<PathBuf>,
    /// The image configuration's `Env`.
    pub env: Vec<String>,
}

pub type UnpackLocks = Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>;

/// Runs `make` into a fresh temporary directory and renames it to `dest`, once: concurrent
/// callers for the same `dest` wait for the first.
pub(crate) fn unpack_once(
    layout: &Layout,
    locks: &UnpackLocks,
    dest: &Path,
    make: impl FnOnce(&Path) -> HostResult<()>,
) -> HostResult<()> {
    if dest.exists() {
        return Ok(());
    }
    let key = dest.to_string_lossy().into_owned();
    let lock = locks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key.clone())
        .or_default()
        .clone();
    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    if dest.exists() {
        return Ok(());
    }
    let tmp_root = layout.images_tmp_dir();
    fs::create_dir_all(&tmp_root).map_err(|e| HostError::io("creating the image cache", e))?;
    let tmp = tmp_root.join(format!(
        "{}-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("image"),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)
        .map_err(|e| HostError::io(format!("creating {}", tmp.display()), e))?;
    let result = make(&tmp).and_then(|()| {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| HostError::io("creating the image cache", e))?;
        }
        fs::rename(&tmp, dest)
            .map_err(|e| HostError::io(format!("renaming to {}", dest.display()), e))
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    locks.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
    result
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A reader that transparently gunzips gzip input.
fn maybe_gunzip<'a>(mut input: BufReader<Box<dyn Read + 'a>>) -> io::Result<Box<dyn Read + 'a>> {
    use std::io::BufRead;
    let head = input.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(input)))
    } else {
        Ok(Box::new(input))
    }
}

/// A tar rootfs, unpacked once into the cache (keyed by its path, size and mtime).
pub fn unpack_tar_image(
    layout: &Layout,
    path: &Path,
    meta: &fs::Metadata,
    locks: &UnpackLocks,
) -> HostResult<PathBuf> {
    let key = sha256_hex(
        format!(
            "{}\0{}\0{}.{}",
            path.display(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        )
        .as_bytes(),
    );
    let dest = layout.tar_image_dir(&key[..32]);
    unpack_once(layout, locks, &dest, |tmp| {
        let file = File::open(path)
            .map_err(|e| HostError::Invalid(format!("rootfs {}: {e}", path.display())))?;
        unpack_layer(Box::new(file), tmp)
            .map_err(|e| HostError::Invalid(format!("unpacking rootfs {}: {e}", path.display())))
    })?;
    Ok(dest)
}

/// Unpacks one layer (tar, optionally gzipped) into `dest`, whiteouts in overlay form.
pub fn unpack_layer(input: Box<dyn Read + '_>, dest: &Path) -> io::Result<()> {
    let reader = maybe_gunzip(BufReader::with_capacity(1 << 16, input))?;
    let mut archive = tar::Archive::new(PadToBlocks {
        inner: reader,
        read: 0,
        padding: None,
    });
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let parent = dest.join(path.parent().unwrap_or(Path::new("")));
            fs::create_dir_all(&parent)?;
            if hidden == ".wh..opq" {
                set_xattr(&parent, "trusted.overlay.opaque", b"y")?;
            } else {
                let target = parent.join(hidden);
                let _ = fs::remove_dir_all(&target).or_else(|_| fs::remove_file(&target));
                nix::sys::stat::mknod(
                    &target,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::empty(),
                    0,
                )
                .map_err(io::Error::from)?;
            }
            continue;
        }
        entry.unpack_in(dest)?;
    }
    Ok(())
}

/// Some image tools write layers whose last entry lacks its block padding and the end
/// marker (GNU tar accepts them). Layers are digest-checked, so the missing zeros are supplied.
struct PadToBlocks<R> {
    inner: R,
    read: u64,
    padding: Option<u64>,
}

impl<R: Read> Read for PadToBlocks<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.padding.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.read += n as u64;
                return Ok(n);
            }
            self.padding = Some((512 - self.read % 512) % 512 + 1024);
        }
        let left = self.padding.as_mut().expect("set above");
        let n = (*left).min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        *left -= n as u64;
        Ok(n)
    }
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let n = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: valid C strings and a value slice we own.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize, Default)]
struct ImageConfig {
    #[serde(default)]
    config: Option<ImageConfigBody>,
}

#[derive(Debug, Deserialize, Default)]
struct ImageConfigBody {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
}

pub(crate) fn image_env(config: &[u8]) -> Vec<String> {
    serde_json::from_slice::<ImageConfig>(config)
        .ok()
        .and_then(|c| c.config)
        .and_then(|c| c.env)
        .unwrap_or_default()
}

/// `sha256:<hex>` -> `<hex>`, refusing anything that could leave the cache directory.
pub(crate) fn digest_hex(digest: &str) -> HostResult<&str> {
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(HostError::Invalid(format!("unsupported digest {digest:?}")))
    }
}

fn is_index(media_type: &str) -> bool {
    media_type.contains("image.index") || media_type.contains("manifest.list")
}

fn pick_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .or_else(|| manifests.first())
}

/// An OCI image layout directory (`index.json`, `blobs/sha256/...`).
pub fn resolve_oci_layout(
    layout: &Layout,
    dir: &Path,
    tag: Option<&str>,
    locks: &UnpackLocks,
) -> HostResult<ResolvedImage> {
    let invalid = |what: String| HostError::Invalid(format!("oci image {}: {what}", dir.display()));
    let blob = |digest: &str| -> HostResult<PathBuf> {
        Ok(dir.join("blobs/sha256").join(digest_hex(digest)?))
    };
    let read =
        |path: &Path| fs::read(path).map_err(|e| invalid(format!("{}: {e}", path.display())));
    let index: Index = serde_json::from_slice(&read(&dir.join("index.json"))?)
        .map_err(|e| invalid(format!("index.json: {e}")))?;
    let chosen = match tag {
        Some(tag) => index.manifests.iter().find(|m| {
            m.annotations
                .get("org.opencontainers.image.ref.name")
                .map(String::as_str)
                == Some(tag)
        }),
        None => index.manifests.first(),
    }
    .ok_or_else(|| invalid(format!("no manifest tagged {:?}", tag.unwrap_or("(any)"))))?;
    let mut manifest_bytes = read(&blob(&chosen.digest)?)?;
    if is_index(&chosen.media_type) {
        let nested: Index =
            serde_json::from_slice(&manifest_bytes).map_err(|e| invalid(e.to_string()))?;
        let pick = pick_platform(&nested.manifests).ok_or_else(|| invalid("empty index".into()))?;
        manifest_bytes = read(&blob(&pick.digest)?)?;
    }
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| invalid(format!("manifest: {e}")))?;
    let config = read(&blob(&manifest.config.digest)?)?;
    let mut lowers = Vec::new();
    for layer in &manifest.layers {
        let hex = digest_hex(&layer.digest)?;
        let dest = layout.layer_dir(hex);
        let source = blob(&layer.digest)?;
        unpack_once(layout, locks, &dest, |tmp| {
            let file =
                File::open(&source).map_err(|e| invalid(format!("{}: {e}", source.display())))?;
            unpack_layer(Box::new(file), tmp).map_err(|e| invalid(format!("layer {hex}: {e}")))
        })?;
        lowers.push(dest);
    }
    lowers.reverse();
    if lowers.is_empty() {
        return Err(invalid("the image has no layers".into()));
    }
    Ok(ResolvedImage {
        lowers,
        env: image_env(&config),
    })
}
