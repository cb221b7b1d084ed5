//! What a Linux-backend test server has on the host, counted from the host's side (mountinfo,
//! the cgroup trees, /sys/class/net, nftables, loop devices, its directories), so a test can
//! compare before and after and name what leaked.

use crate::TestServer;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Counts of one server's host objects. Equal counts before and after a workload mean it left
/// nothing behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostObjects {
    /// Mounts whose mount point or source is under the server's directories.
    pub mounts: usize,
    /// Container cgroups under the server's parent cgroup, over every hierarchy.
    pub cgroups: usize,
    /// The server's bridges and the links plugged into them.
    pub links: usize,
    /// Network namespace files in the server's run directory.
    pub netns: usize,
    /// Per-container egress chains in the server's nftables tables.
    pub firewall_chains: usize,
    /// Port mappings and container addresses in the server's nftables table.
    pub firewall_elements: usize,
    /// Loop devices backed by a file under the server's directory.
    pub loop_devices: usize,
    /// Files in the depot, the run directory and the container records (the image cache in
    /// the state directory is kept on purpose).
    pub files: usize,
}

impl HostObjects {
    pub fn of(server: &TestServer) -> HostObjects {
        let dir = server.dir();
        let dir_text = dir.display().to_string();
        HostObjects {
            mounts: std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(&dir_text))
                .count(),
            cgroups: count_cgroups(&server.cgroup_parent()),
            links: count_links(server.tag()),
            netns: count_files(&server.layout().netns_dir()),
            firewall_chains: count_firewall_chains(server.tag()),
            firewall_elements: count_firewall_elements(server.tag()),
            loop_devices: count_loop_devices(dir),
            files: count_files(&dir.join("depot"))
                + count_files(&dir.join("run"))
                + count_files(&dir.join("state/records")),
        }
    }
}

impl HostObjects {
    /// The counts once the server has finished the deferred part of earlier network removals
    /// (links and firewall chains linger about a second after a destroy).
    pub async fn after_removals(server: &TestServer) -> HostObjects {
        let retired = server.layout().network_state_dir().join(".retired");
        crate::eventually(std::time::Duration::from_secs(30), || async {
            count_files(&retired) == 0
        })
        .await;
        HostObjects::of(server)
    }

    /// The files counted in [`HostObjects::files`], by path, to name what leaked.
    pub fn file_paths(server: &TestServer) -> Vec<PathBuf> {
        let dir = server.dir();
        let mut paths = Vec::new();
        for sub in ["depot", "run", "state/records"] {
            list_files(&dir.join(sub), &mut paths);
        }
        paths
    }
}

fn list_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        into.push(entry.path());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            list_files(&entry.path(), into);
        }
    }
}

/// Entries under `dir`, recursively (0 if it does not exist).
pub fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    1 + if e.file_type().is_ok_and(|t| t.is_dir()) {
                        count_files(&e.path())
                    } else {
                        0
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Child cgroups of `parent` (e.g. `/trellis-1a2b3c4d`) in every mounted hierarchy.
pub fn count_cgroups(parent: &str) -> usize {
    let roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    roots
        .iter()
        .map(|root| {
            std::fs::read_dir(root.join(parent.trim_start_matches('/')))
                .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
                .unwrap_or(0)
        })
        .sum()
}

/// The bridges of the server tagged `tag` and the links plugged into them.
pub fn count_links(tag: &str) -> usize {
    let prefix = format!("trbr{tag}");
    std::fs::read_dir("/sys/class/net")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|bridge| 1 + count_files(&bridge.path().join("brif")))
                .sum()
        })
        .unwrap_or(0)
}

fn nft_text(args: &[&str]) -> String {
    Command::new("nft")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Container chains (`c-<id>`) in the server's egress tables.
fn count_firewall_chains(tag: &str) -> usize {
    let prefix = trellis_os::linux::network::naming::firewall_table_prefix(tag);
    nft_text(&["list", "tables", "netdev"])
        .lines()
        .filter_map(|l| l.strip_prefix("table netdev "))
        .filter(|name| name.starts_with(&prefix))
        .map(|name| {
            nft_text(&["list", "table", "netdev", name])
                .lines()
                .filter(|l| l.trim_start().starts_with("chain c-"))
                .count()
        })
        .sum()
}

/// Elements of the `netin` map and the `containers` set of the server's table.
fn count_firewall_elements(tag: &str) -> usize {
    let table = format!("trellis{tag}");
    ["netin", "containers"]
        .iter()
        .map(|name| {
            let kind = if *name == "netin" { "map" } else { "set" };
            let text = nft_text(&["list", kind, "ip", &table, name]);
            text.split_once("elements = {")
                .and_then(|(_, rest)| rest.split_once('}'))
                .map(|(elements, _)| elements.split(',').filter(|e| !e.trim().is_empty()).count())
                .unwrap_or(0)
        })
        .sum()
}

/// Loop devices whose backing file lies under `dir`.
fn count_loop_devices(dir: &Path) -> usize {
    let dir_text = dir.display().to_string();
    std::fs::read_dir("/sys/block")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("loop/backing_file"))
                        .is_ok_and(|f| f.starts_with(&dir_text))
                })
                .count()
        })
        .unwrap_or(0)
}
