//! The files streamed into a fake container: an in-memory tree, enough for tar round trips
//! and for `cat FILE`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use trellis_os::{HostError, HostResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileNode {
    Dir,
    File(Vec<u8>),
}

/// One container's files: normalized absolute path -> file or directory.
#[derive(Debug, Clone, Default)]
pub(crate) struct FileTree(BTreeMap<String, FileNode>);

/// Entries of a tar stream, with the paths they unpack to.
pub(crate) struct Unpacked {
    base: String,
    entries: Vec<(String, FileNode)>,
}

/// Entries selected for a tar stream, with the names they get in it.
pub(crate) type Selected = Vec<(String, FileNode)>;

impl FileTree {
    /// The contents of the file at `path`, if there is one.
    pub(crate) fn file(&self, path: &str) -> Option<&[u8]> {
        match self.0.get(&normalize(path)) {
            Some(FileNode::File(data)) => Some(data),
            _ => None,
        }
    }

    /// Adds what a tar stream held; the directories on the way are made.
    pub(crate) fn add(&mut self, unpacked: Unpacked) {
        for dir in ancestors(&unpacked.base) {
            self.0.insert(dir, FileNode::Dir);
        }
        for (path, node) in unpacked.entries {
            for dir in ancestors(&path) {
                self.0.entry(dir).or_insert(FileNode::Dir);
            }
            self.0.insert(path, node);
        }
    }

    /// What a stream-out of `path` holds: the directory itself and everything under it, or only
    /// its contents when `path` ends with `/` (as tar -C does).
    pub(crate) fn select(&self, path: &str) -> HostResult<Selected> {
        let contents_only = path.ends_with('/');
        let source = normalize(path);
        let Some(root) = self
            .0
            .get(&source)
            .cloned()
            .or_else(|| (source == "/").then_some(FileNode::Dir))
        else {
            return Err(HostError::Invalid(format!(
                "{path}: no such file or directory"
            )));
        };
        let prefix = if source == "/" {
            "/".to_string()
        } else {
            format!("{source}/")
        };
        let mut selected = Vec::new();
        let strip = if contents_only {
            selected.push((".".to_string(), FileNode::Dir));
            prefix.clone()
        } else {
            let parent = match source.rfind('/') {
                Some(0) | None => "/".to_string(),
                Some(i) => format!("{}/", &source[..i]),
            };
            selected.push((source[parent.len().min(source.len())..].to_string(), root));
            parent
        };
        for (path, node) in self.0.range(prefix.clone()..) {
            if !path.starts_with(&prefix) {
                break;
            }
            selected.push((path[strip.len()..].to_string(), node.clone()));
        }
        Ok(selected)
    }
}

/// Reads a tar stream to unpack at `base`.
pub(crate) fn read_tar(base: &str, tar: &mut dyn Read) -> HostResult<Unpacked> {
    let base = normalize(base);
    let unreadable = |e: std::io::Error| HostError::Invalid(format!("reading tar stream: {e}"));
    let mut entries = Vec::new();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        let path = entry
            .path()
            .map_err(|e| HostError::Invalid(format!("bad path in tar stream: {e}")))?
            .to_string_lossy()
            .to_string();
        let full = normalize(&format!("{base}/{path}"));
        if entry.header().entry_type().is_dir() {
            entries.push((full, FileNode::Dir));
        } else {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(unreadable)?;
            entries.push((full, FileNode::File(data)));
        }
    }
    Ok(Unpacked { base, entries })
}

/// Writes `selected` as a tar stream.
pub(crate) fn write_tar(selected: Selected, tar: &mut dyn Write) -> HostResult<()> {
    let failed = |e| HostError::io("writing tar stream", e);
    let mut builder = tar::Builder::new(tar);
    for (name, node) in selected {
        let mut header = tar::Header::new_gnu();
        let (name, data): (String, &[u8]) = match &node {
            FileNode::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                let name = if name == "." {
                    name
                } else {
                    format!("{name}/")
                };
                (name, &[])
            }
            FileNode::File(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(data.len() as u64);
                (name, data)
            }
        };
        builder
            .append_data(&mut header, &name, data)
            .map_err(failed)?;
    }
    builder
        .into_inner()
        .map_err(failed)?
        .flush()
        .map_err(failed)
}

/// `a/./b//c/` -> `/a/b/c`; `..` is clamped at the root.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Every proper ancestor directory of `path` except the root.
fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = path;
    while let Some(i) = at.rfind('/') {
        if i == 0 {
            break;
        }
        at = &at[..i];
        out.push(at.to_string());
    }
    out
}
