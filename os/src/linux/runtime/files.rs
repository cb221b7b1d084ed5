//! Tar streams in and out of a container, run in a child of its init as the requested user.
//! The child's root is the container's root, so `..` and symlinks (absolute ones and chains)
//! resolve inside the container, and the user's own permissions apply.

use super::child::{become_user, fail, reset_signals, resolve_user, user_path};
use super::protocol::Failure;
use super::protocol::FailureKind;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

/// An error with every cause in its chain (the tar crate puts the useful part in `source`).
fn chain(e: &io::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.get_ref().and_then(|inner| inner.source());
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn as_user(user: &str, prefix: &str) -> Result<crate::users::ExecUser, Failure> {
    reset_signals();
    let resolved = resolve_user(user).map_err(|f| Failure {
        kind: f.kind,
        message: format!("{prefix}: {}", f.message),
    })?;
    become_user(&resolved).map_err(|f| Failure {
        kind: f.kind,
        message: format!("{prefix}: {}", f.message),
    })?;
    Ok(resolved)
}

fn failed(prefix: &str, message: String) -> Failure {
    Failure {
        kind: FailureKind::Failed,
        message: format!("{prefix}: {message}"),
    }
}

pub(super) fn stream_in(path: &str, user: &str, data: OwnedFd, report: OwnedFd) -> ! {
    let prefix = "error streaming in";
    let result = (|| {
        let user = as_user(user, prefix)?;
        let dest = user_path(path, &user);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dest)
            .map_err(|e| {
                failed(
                    prefix,
                    format!("creating {}: {}", dest.display(), chain(&e)),
                )
            })?;
        let mut input = File::from(data);
        let mut archive = tar::Archive::new(&mut input);
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(true);
        // Extended attributes are set here, each on its own (see `unpack`).
        archive.set_unpack_xattrs(false);
        archive.set_overwrite(true);
        archive.set_preserve_ownerships(user.uid == 0);
        unpack(&mut archive, &dest).map_err(|e| failed(prefix, chain(&e)))?;
        // Read what follows the end-of-archive marker so the sender never sees a broken pipe.
        io::copy(&mut input, &mut io::sink()).map_err(|e| failed(prefix, chain(&e)))?;
        Ok(())
    })();
    finish(result, report)
}

/// Unpacks the archive into `dest` as `tar::Archive::unpack` does (directories last, deepest
/// first, so their modes cannot stop their contents), and sets each entry's extended
/// attributes (`SCHILY.xattr.*`) one by one, skipping those the user may not set. That is gdn's
/// behaviour: its stream-in runs GNU tar (`--xattrs --xattrs-include=*`) as the user, which
/// warns about an attribute it cannot set (`security.capability` as a non-root user, `trusted.*`
/// in an unprivileged container) and carries on, exiting 0; the tar crate would abort the
/// whole stream instead.
fn unpack<R: Read>(archive: &mut tar::Archive<R>, dest: &Path) -> io::Result<()> {
    let dest = dest.canonicalize().unwrap_or_else(|_| dest.to_path_buf());
    let mut directories = Vec::new();
    for entry in archive.entries()? {
        let entry = entry?;
        if entry.header().entry_type() == tar::EntryType::Directory {
            directories.push(entry);
        } else {
            unpack_entry(entry, &dest)?;
        }
    }
    directories.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for dir in directories {
        unpack_entry(dir, &dest)?;
    }
    Ok(())
}

const PAX_XATTR: &[u8] = b"SCHILY.xattr.";

fn unpack_entry<R: Read>(mut entry: tar::Entry<'_, R>, dest: &Path) -> io::Result<()> {
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry.pax_extensions()? {
        for extension in extensions {
            let extension = extension?;
            if let Some(name) = extension.key_bytes().strip_prefix(PAX_XATTR) {
                xattrs.push((name.to_vec(), extension.value_bytes().to_vec()));
            }
        }
    }
    if !entry.unpack_in(dest)? || xattrs.is_empty() {
        return Ok(());
    }
    // Where `unpack_in` put it: the entry's path without its root, `.` and prefix parts (it
    // skips entries with `..`, which returned false above).
    let mut target = dest.to_path_buf();
    for part in entry.path()?.components() {
        if let std::path::Component::Normal(part) = part {
            target.push(part);
        }
    }
    for (name, value) in xattrs {
        // As GNU tar: an attribute that cannot be set is left out, the file stays.
        let _ = set_xattr(&target, &name, &value);
    }
    Ok(())
}

/// `lsetxattr`: the attribute of a symlink itself, never of what it points to.
fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: valid C strings and a value slice we own, for the duration of the call.
    let r = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
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

pub(super) fn stream_out(path: &str, user: &str, data: OwnedFd, report: OwnedFd) -> ! {
    let prefix = "error streaming out";
    let result = (|| {
        let user = as_user(user, prefix)?;
        let source = user_path(path, &user);
        let meta = std::fs::symlink_metadata(&source)
            .map_err(|e| failed(prefix, format!("{}: {}", source.display(), chain(&e))))?;
        let mut builder =
            tar::Builder::new(io::BufWriter::with_capacity(1 << 16, File::from(data)));
        builder.follow_symlinks(false);
        let contents_only = path.ends_with('/');
        let name = if contents_only {
            "./".to_string()
        } else {
            source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| ".".to_string())
        };
        append_tree(&mut builder, &source, &name, &meta).map_err(|e| failed(prefix, chain(&e)))?;
        builder
            .into_inner()
            .and_then(|mut w| w.flush())
            .map_err(|e| failed(prefix, chain(&e)))?;
        Ok(())
    })();
    finish(result, report)
}

fn finish(result: Result<(), Failure>, report: OwnedFd) -> ! {
    match result {
        Ok(()) => {
            drop(report);
            // SAFETY: ending a forked child.
            unsafe { libc::_exit(0) }
        }
        Err(failure) => fail(&report, failure),
    }
}

/// Appends `path` as `name` (a directory recursively), with names written exactly as given
/// (the tar crate would drop a leading `./`, which Garden clients expect to see).
fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    name: &str,
    meta: &std::fs::Metadata,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    header.set_uid(meta.uid() as u64);
    header.set_gid(meta.gid() as u64);
    let ft = meta.file_type();
    if ft.is_dir() {
        let dir_name = if name.ends_with('/') {
            name.to_string()
        } else {
            format!("{name}/")
        };
        header.set_size(0);
        append_named(builder, &mut header, &dir_name, None, io::empty())?;
        let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child_meta = std::fs::symlink_metadata(entry.path())?;
            let child_name = format!("{dir_name}{}", entry.file_name().to_string_lossy());
            append_tree(builder, &entry.path(), &child_name, &child_meta)?;
        }
        Ok(())
    } else if ft.is_symlink() {
        let target = std::fs::read_link(path)?;
        header.set_size(0);
        append_named(
            builder,
            &mut header,
            name,
            Some(&target.to_string_lossy()),
            io::empty(),
        )
    } else if ft.is_file() {
        let file = File::open(path)?;
        header.set_size(meta.len());
        append_named(builder, &mut header, name, None, file)
    } else {
        // Devices, fifos and sockets: the header alone.
        header.set_size(0);
        append_named(builder, &mut header, name, None, io::empty())
    }
}

/// Writes `header` under `name` (and link target), with GNU long-name records when too long.
fn append_named<W: Write>(
    builder: &mut tar::Builder<W>,
    header: &mut tar::Header,
    name: &str,
    link: Option<&str>,
    data: impl Read,
) -> io::Result<()> {
    for (value, kind) in [
        (Some(name), tar::EntryType::GNULongName),
        (link, tar::EntryType::GNULongLink),
    ] {
        let Some(value) = value else { continue };
        if value.len() > 100 {
            let mut long = tar::Header::new_gnu();
            long.as_gnu_mut().expect("gnu header").name[..13].copy_from_slice(b"././@LongLink");
            long.set_mode(0o644);
            long.set_entry_type(kind);
            long.set_size(value.len() as u64 + 1);
            long.set_cksum();
            let mut body = value.as_bytes().to_vec();
            body.push(0);
            builder.append(&long, body.as_slice())?;
        }
    }
    let old = header.as_old_mut();
    old.name = [0; 100];
    let n = name.len().min(100);
    old.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    if let Some(link) = link {
        old.linkname = [0; 100];
        let n = link.len().min(100);
        old.linkname[..n].copy_from_slice(&link.as_bytes()[..n]);
    }
    header.set_cksum();
    builder.append(header, data)
}
