//! Resolving a Garden user string against a container's `/etc/passwd` and `/etc/group`, with
//! the semantics (and the error texts) of runc's user lookup that gdn relies on.
//!
//! Forms: `""` (root), `name`, `uid`, and `user:group` where either side is a name or a number.
//! A name must exist in passwd; a number need not. An explicit group gives no supplementary
//! groups; otherwise every group that lists the user's name as a member is supplementary.

use std::io;
use std::path::Path;

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub supplementary_gids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

const MAX_ID: u64 = 2147483647;

pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2).and_then(|s| s.parse().ok()).unwrap_or(0),
                gid: f.get(3).and_then(|s| s.parse().ok()).unwrap_or(0),
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2).and_then(|s| s.parse().ok()).unwrap_or(0),
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// A file that may be missing: `Ok(None)` when it is.
fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_id(s: &str) -> Option<Result<u32, String>> {
    let n: u64 = s.parse().ok()?;
    Some(if n > MAX_ID {
        Err("uids and gids must be in range 0-2147483647".to_string())
    } else {
        Ok(n as u32)
    })
}

/// Resolves `spec` against the passwd and group files under `root` (the container's `/` as this
/// process sees it). Errors are runc's texts.
pub fn resolve(root: &Path, spec: &str) -> Result<ExecUser, String> {
    let passwd_path = root.join("etc/passwd");
    let group_path = root.join("etc/group");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let shown = if user_part.is_empty() {
        "root"
    } else {
        user_part
    };
    let passwd =
        read_optional(&passwd_path).map_err(|e| format!("unable to find user {shown}: {e}"))?;
    // A missing passwd file is fine for root and numeric users.
    let users = passwd.as_deref().map(parse_passwd).unwrap_or_default();

    let mut user = ExecUser {
        uid: 0,
        gid: 0,
        home: "/".to_string(),
        supplementary_gids: Vec::new(),
    };
    let mut matched_name: Option<String> = None;
    if user_part.is_empty() {
        if let Some(e) = users.iter().find(|e| e.uid == 0) {
            user.gid = e.gid;
            user.home = e.home.clone();
            matched_name = Some(e.name.clone());
        }
    } else if let Some(id) = parse_id(user_part) {
        let uid = id?;
        user.uid = uid;
        if let Some(e) = users.iter().find(|e| e.uid == uid) {
            user.gid = e.gid;
            user.home = e.home.clone();
            matched_name = Some(e.name.clone());
        }
    } else if let Some(e) = users.iter().find(|e| e.name == user_part) {
        user.uid = e.uid;
        user.gid = e.gid;
        user.home = e.home.clone();
        matched_name = Some(e.name.clone());
    } else if user_part == "root" && passwd.is_none() {
        // runc's special case: root without a passwd file.
    } else {
        return Err(format!(
            "unable to find user {user_part}: no matching entries in passwd file"
        ));
    }
    if user.home.is_empty() {
        user.home = "/".to_string();
    }

    match group_part {
        Some(group) if !group.is_empty() => {
            if let Some(id) = parse_id(group) {
                user.gid = id?;
            } else {
                let groups = read_optional(&group_path)
                    .map_err(|e| format!("unable to find groups for spec {group}: {e}"))?
                    .map(|t| parse_group(&t))
                    .unwrap_or_default();
                match groups.iter().find(|g| g.name == group) {
                    Some(g) => user.gid = g.gid,
                    None => {
                        return Err(format!(
                            "unable to find group {group}: no matching entries in group file"
                        ))
                    }
                }
            }
        }
        _ => {
            if let Some(name) = &matched_name {
                let groups = read_optional(&group_path)
                    .map_err(|e| format!("unable to find groups for spec {name}: {e}"))?
                    .map(|t| parse_group(&t))
                    .unwrap_or_default();
                for g in groups {
                    if g.members.iter().any(|m| m == name)
                        && !user.supplementary_gids.contains(&g.gid)
                    {
                        user.supplementary_gids.push(g.gid);
                    }
                }
            }
        }
    }
    Ok(user)
}

/// The process environment as gdn builds it: the base env (image, then container), the
/// process's own env, then `PATH` (by uid) and `USER` when no entry sets them; duplicates keep
/// the last value at the last position; `HOME` is added when missing or empty.
pub fn build_env(
    base: &[String],
    process_env: &[String],
    user_spec: &str,
    user: &ExecUser,
) -> Vec<String> {
    let mut env: Vec<String> = base.iter().chain(process_env).cloned().collect();
    let has = |env: &[String], key: &str| env.iter().any(|e| e.starts_with(key));
    if !has(&env, "PATH=") {
        env.push(if user.uid == 0 {
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()
        } else {
            "PATH=/usr/local/bin:/usr/bin:/bin".to_string()
        });
    }
    if !has(&env, "USER=") {
        let name = if user_spec.is_empty() {
            "root"
        } else {
            user_spec
        };
        env.push(format!("USER={name}"));
    }
    let key = |e: &str| {
        e.split_once('=')
            .map(|(k, _)| k.to_string())
            .unwrap_or_else(|| e.to_string())
    };
    let mut deduped: Vec<String> = Vec::with_capacity(env.len());
    for (i, entry) in env.iter().enumerate() {
        let k = key(entry);
        if !env[i + 1..].iter().any(|later| key(later) == k) {
            deduped.push(entry.clone());
        }
    }
    let home_set = deduped
        .iter()
        .any(|e| e.starts_with("HOME=") && e.len() > "HOME=".len());
    if !home_set {
        deduped.retain(|e| !e.starts_with("HOME="));
        deduped.push(format!("HOME={}", user.home));
    }
    deduped
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root filesystem with these /etc files; removed when the guard drops.
    fn root_with(passwd: Option<&str>, group: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix("trellis-users-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        if let Some(p) = passwd {
            std::fs::write(dir.path().join("etc/passwd"), p).unwrap();
        }
        if let Some(g) = group {
            std::fs::write(dir.path().join("etc/group"), g).unwrap();
        }
        dir
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1010::/home/alice:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nwheel:x:10:root\nalice:x:1010:\nextra:x:1011:alice,bob\nstaff:x:50:\n";

    #[test]
    fn names_numbers_and_groups_resolve_like_runc() {
        let dir = root_with(Some(PASSWD), Some(GROUP));
        let root = dir.path();
        let alice = resolve(root, "alice").unwrap();
        assert_eq!(
            (alice.uid, alice.gid, alice.home.as_str()),
            (1001, 1010, "/home/alice")
        );
        assert_eq!(alice.supplementary_gids, vec![1011]);
        let r = resolve(root, "").unwrap();
        assert_eq!(
            (r.uid, r.gid, r.home.as_str(), r.supplementary_gids.clone()),
            (0, 0, "/root", vec![10])
        );
        let n = resolve(root, "1001:1002").unwrap();
        assert_eq!((n.uid, n.gid, n.supplementary_gids.len()), (1001, 1002, 0));
        let g = resolve(root, "alice:staff").unwrap();
        assert_eq!((g.uid, g.gid, g.supplementary_gids.len()), (1001, 50, 0));
        let unknown = resolve(root, "5000").unwrap();
        assert_eq!(
            (unknown.uid, unknown.gid, unknown.home.as_str()),
            (5000, 0, "/")
        );
        assert_eq!(
            resolve(root, "batman").unwrap_err(),
            "unable to find user batman: no matching entries in passwd file"
        );
        assert_eq!(
            resolve(root, "alice:nogroup").unwrap_err(),
            "unable to find group nogroup: no matching entries in group file"
        );
        assert_eq!(
            resolve(root, "4294967295").unwrap_err(),
            "uids and gids must be in range 0-2147483647"
        );
    }

    #[test]
    fn root_works_without_a_passwd_file() {
        let dir = root_with(None, None);
        let root = dir.path();
        let r = resolve(root, "root").unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (0, 0, "/"));
        assert!(resolve(root, "alice").is_err());
    }

    #[test]
    fn env_is_merged_like_gdn() {
        let user = ExecUser {
            uid: 1001,
            gid: 1010,
            home: "/home/alice".into(),
            supplementary_gids: vec![],
        };
        let env = build_env(
            &["CONTAINER_ENV=1".into(), "TEST=hi".into()],
            &["TEST=hello".into(), "FRUIT=banana".into()],
            "alice",
            &user,
        );
        assert_eq!(
            env,
            vec![
                "CONTAINER_ENV=1",
                "TEST=hello",
                "FRUIT=banana",
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "USER=alice",
                "HOME=/home/alice"
            ]
        );
        let root = ExecUser {
            uid: 0,
            gid: 0,
            home: "/root".into(),
            supplementary_gids: vec![],
        };
        let env = build_env(
            &["PATH=/x".into()],
            &["HOME=".into(), "USER=nobody".into()],
            "",
            &root,
        );
        assert_eq!(env, vec!["PATH=/x", "USER=nobody", "HOME=/root"]);
    }
}
