//! `trellis-test-image-plugin`: an image plugin for the tests, with grootfs's command line and
//! JSON, making root filesystems from local tar images in a store directory:
//!
//! ```text
//! trellis-test-image-plugin --store DIR [--without-mount] COMMAND ...
//!   init-store [--store-size-bytes N] [--uid-mapping C:H:S]... [--gid-mapping C:H:S]...
//!   create [--disk-limit-size-bytes N] [--exclude-image-from-quota] [--username U]
//!          [--password P] TAR_PATH ID          -> an OCI spec on stdout
//!   delete ID
//!   stats ID                                  -> {"disk_usage": {...}}
//!   capacity                                  -> {"capacity": N}
//! ```
//!
//! As grootfs, `init-store` records the id mappings and `create` makes a rootfs owned by the
//! mapped ids. `--without-mount` stands for grootfs's `without_mount` setting: the image goes
//! into a lower dir and the answer asks for an overlay on `/`. Every invocation appends its
//! arguments (a JSON array) to `DIR/argv.log`; a file `DIR/behaviour/COMMAND` holding `fail`,
//! `bad-json` or `wait` makes that command exit 1 with a message on stderr, answer no JSON, or
//! wait for a file `DIR/behaviour/COMMAND.release` before it does its work.

use serde_json::{json, Value};
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `container:host:size` ranges.
type Ranges = Vec<(u32, u32, u32)>;

struct Store {
    dir: PathBuf,
    without_mount: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let mut rest = args;
    let mut store = None;
    let mut without_mount = false;
    loop {
        match rest {
            [flag, dir, tail @ ..] if flag == "--store" => {
                store = Some(PathBuf::from(dir));
                rest = tail;
            }
            [flag, tail @ ..] if flag == "--without-mount" => {
                without_mount = true;
                rest = tail;
            }
            _ => break,
        }
    }
    let store = Store {
        dir: store.ok_or("--store DIR is required")?,
        without_mount,
    };
    fs::create_dir_all(&store.dir).map_err(|e| e.to_string())?;
    store.log(args)?;
    let (command, rest) = rest.split_first().ok_or("no command given")?;
    match fs::read_to_string(store.dir.join("behaviour").join(command)) {
        Ok(b) if b.trim() == "fail" => {
            return Err(format!("test plugin: {command} told to fail"));
        }
        Ok(b) if b.trim() == "bad-json" => {
            println!("this is not json");
            return Ok(());
        }
        Ok(b) if b.trim() == "wait" => {
            let release = store
                .dir
                .join("behaviour")
                .join(format!("{command}.release"));
            while !release.exists() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        _ => {}
    }
    match command.as_str() {
        "init-store" => store.init(rest),
        "create" => store.create(rest),
        "delete" => store.delete(rest),
        "stats" => store.stats(rest),
        "capacity" => {
            let size = store.namespace()["store_size_bytes"].as_u64().unwrap_or(0);
            println!("{}", json!({ "capacity": size }));
            Ok(())
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

/// Options (`--flag VALUE`, or `--switch` with an empty value) and positional arguments.
type Parsed<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);

/// Splits `--flag VALUE` and `--switch` options from the positional arguments.
fn options<'a>(args: &'a [String], switches: &[&str]) -> Result<Parsed<'a>, String> {
    let mut flags = Vec::new();
    let mut positional = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        if switches.contains(&arg) {
            flags.push((arg, ""));
        } else if arg.starts_with("--") {
            let value = args.get(i + 1).ok_or(format!("{arg} needs a value"))?;
            flags.push((arg, value.as_str()));
            i += 1;
        } else {
            positional.push(arg);
        }
        i += 1;
    }
    Ok((flags, positional))
}

impl Store {
    fn log(&self, args: &[String]) -> Result<(), String> {
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("argv.log"))
            .map_err(|e| e.to_string())?;
        writeln!(log, "{}", json!(args)).map_err(|e| e.to_string())
    }

    fn image_dir(&self, id: &str) -> PathBuf {
        self.dir.join("images").join(id)
    }

    fn namespace(&self) -> Value {
        fs::read(self.dir.join("namespace.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    fn init(&self, args: &[String]) -> Result<(), String> {
        let (flags, _) = options(args, &[])?;
        let ranges = |name: &str| -> Result<Ranges, String> {
            flags
                .iter()
                .filter(|(f, _)| *f == name)
                .map(|(_, v)| {
                    let n: Vec<u32> = v
                        .split(':')
                        .map(|p| p.parse().map_err(|_| format!("bad mapping {v:?}")))
                        .collect::<Result<_, _>>()?;
                    match n[..] {
                        [c, h, s] => Ok((c, h, s)),
                        _ => Err(format!("bad mapping {v:?}")),
                    }
                })
                .collect()
        };
        let size: u64 = flags
            .iter()
            .find(|(f, _)| *f == "--store-size-bytes")
            .map_or(Ok(0), |(_, v)| {
                v.parse().map_err(|_| "bad size".to_string())
            })?;
        let namespace = json!({
            "uid_mappings": ranges("--uid-mapping")?,
            "gid_mappings": ranges("--gid-mapping")?,
            "store_size_bytes": size,
        });
        fs::write(self.dir.join("namespace.json"), namespace.to_string()).map_err(|e| e.to_string())
    }

    fn create(&self, args: &[String]) -> Result<(), String> {
        let (_, positional) = options(args, &["--exclude-image-from-quota"])?;
        let [image, id] = positional[..] else {
            return Err("invalid arguments - usage: create [options] <image> <id>".into());
        };
        let dir = self.image_dir(id);
        if dir.exists() {
            return Err(format!("image for id `{id}` already exists"));
        }
        let unpack_into = if self.without_mount {
            dir.join("lower")
        } else {
            dir.join("rootfs")
        };
        fs::create_dir_all(&unpack_into).map_err(|e| e.to_string())?;
        let tar = fs::File::open(image).map_err(|e| format!("Image source doesn't exist: {e}"))?;
        let mut archive = tar::Archive::new(tar);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive
            .unpack(&unpack_into)
            .map_err(|e| format!("unpacking {image}: {e}"))?;
        // A mark of where the rootfs came from, for the container to show.
        fs::write(unpack_into.join("etc/image-plugin"), format!("{id}\n"))
            .map_err(|e| e.to_string())?;
        let namespace = self.namespace();
        let uids = mappings(&namespace["uid_mappings"]);
        let gids = mappings(&namespace["gid_mappings"]);
        shift_ids(&unpack_into, &uids, &gids)?;
        fs::write(dir.join("baseline"), bytes_under(&unpack_into).to_string())
            .map_err(|e| e.to_string())?;
        let rootfs = dir.join("rootfs");
        let mut mounts = Vec::new();
        if self.without_mount {
            let (upper, work) = (dir.join("upper"), dir.join("work"));
            for d in [&rootfs, &upper, &work] {
                fs::create_dir_all(d).map_err(|e| e.to_string())?;
            }
            let root = fs::metadata(&unpack_into).map_err(|e| e.to_string())?;
            std::os::unix::fs::chown(&upper, Some(root.uid()), Some(root.gid()))
                .map_err(|e| e.to_string())?;
            mounts.push(json!({
                "destination": "/",
                "type": "overlay",
                "source": "overlay",
                "options": [
                    format!("lowerdir={}", unpack_into.display()),
                    format!("upperdir={}", upper.display()),
                    format!("workdir={}", work.display()),
                ],
            }));
        }
        println!(
            "{}",
            json!({
                "ociVersion": "1.0.2",
                "root": {"path": rootfs},
                "process": {"env": [
                    "PATH=/usr/sbin:/usr/bin:/sbin:/bin:/from-plugin",
                    format!("TEST_PLUGIN_IMAGE={image}"),
                ]},
                "mounts": mounts,
            })
        );
        Ok(())
    }

    fn delete(&self, args: &[String]) -> Result<(), String> {
        let [id] = args else {
            return Err("id was not specified".into());
        };
        let dir = self.image_dir(id);
        if !dir.exists() {
            println!("Image `{id}` not found. Skipping delete.");
            return Ok(());
        }
        fs::remove_dir_all(&dir).map_err(|e| format!("deleting {}: {e}", dir.display()))?;
        println!("Image {id} deleted");
        Ok(())
    }

    fn stats(&self, args: &[String]) -> Result<(), String> {
        let [id] = args else {
            return Err("invalid arguments - usage: stats [options] <id|image path>".into());
        };
        let dir = self.image_dir(id);
        let baseline: u64 = fs::read_to_string(dir.join("baseline"))
            .map_err(|e| format!("image `{id}` not found: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("{e}"))?;
        let total = if self.without_mount {
            bytes_under(&dir.join("lower")) + bytes_under(&dir.join("upper"))
        } else {
            bytes_under(&dir.join("rootfs"))
        };
        let exclusive = if self.without_mount {
            bytes_under(&dir.join("upper"))
        } else {
            total.saturating_sub(baseline)
        };
        println!(
            "{}",
            json!({"disk_usage": {"total_bytes_used": total, "exclusive_bytes_used": exclusive}})
        );
        Ok(())
    }
}

fn mappings(value: &Value) -> Ranges {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

fn host_id(ranges: &Ranges, id: u32) -> u32 {
    if ranges.is_empty() {
        return id;
    }
    ranges
        .iter()
        .find(|(c, _, s)| id >= *c && id - c < *s)
        .map_or(65534, |(c, h, _)| h + (id - c))
}

/// Makes every file's owner the host ids its container ids map to.
fn shift_ids(dir: &Path, uids: &Ranges, gids: &Ranges) -> Result<(), String> {
    let meta = fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    std::os::unix::fs::lchown(
        dir,
        Some(host_id(uids, meta.uid())),
        Some(host_id(gids, meta.gid())),
    )
    .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    // chown clears set-id bits; put them back.
    if !meta.file_type().is_symlink() {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| e.to_string())?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(dir).map_err(|e| e.to_string())? {
            shift_ids(&entry.map_err(|e| e.to_string())?.path(), uids, gids)?;
        }
    }
    Ok(())
}

/// The bytes of the regular files under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return 0;
    };
    if meta.is_dir() {
        fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| bytes_under(&e.path())).sum())
            .unwrap_or(0)
    } else if meta.is_file() {
        meta.len()
    } else {
        0
    }
}
