//! The devices a container sees and may use: the one list behind the nodes init makes (or binds
//! from the host), the v1 devices cgroup rules and the v2 device program. Nothing else can be
//! opened, block devices least of all; `mknod` inside a container makes only nodes it cannot
//! open.

/// A character device node every container gets at `/dev/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceNode {
    pub name: &'static str,
    pub major: u32,
    pub minor: u32,
}

/// `/dev/null`, also what masked files are covered with.
pub const NULL: DeviceNode = DeviceNode {
    name: "null",
    major: 1,
    minor: 3,
};

/// The standard nodes, as runc and gdn make them (mode 0666).
pub const STANDARD_NODES: &[DeviceNode] = &[
    NULL,
    DeviceNode {
        name: "zero",
        major: 1,
        minor: 5,
    },
    DeviceNode {
        name: "full",
        major: 1,
        minor: 7,
    },
    DeviceNode {
        name: "random",
        major: 1,
        minor: 8,
    },
    DeviceNode {
        name: "urandom",
        major: 1,
        minor: 9,
    },
    DeviceNode {
        name: "tty",
        major: 5,
        minor: 0,
    },
];

/// `/dev/fuse`, for privileged containers when the host has it (gdn's addition).
pub const FUSE: DeviceNode = DeviceNode {
    name: "fuse",
    major: 10,
    minor: 229,
};

/// The nodes a container gets.
pub fn nodes(privileged: bool, host_has_fuse: bool) -> Vec<DeviceNode> {
    let mut nodes = STANDARD_NODES.to_vec();
    if privileged && host_has_fuse {
        nodes.push(FUSE);
    }
    nodes
}

/// Whether the host has a fuse device a privileged container can be given.
pub fn host_has_fuse() -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata("/dev/fuse").is_ok_and(|m| m.file_type().is_char_device())
}

/// One allow rule: character devices `major:minor` (`None` = any minor) with read, write and
/// mknod access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowRule {
    pub major: u32,
    pub minor: Option<u32>,
}

impl AllowRule {
    /// The v1 `devices.allow` line.
    pub fn v1_line(&self) -> String {
        match self.minor {
            Some(minor) => format!("c {}:{minor} rwm", self.major),
            None => format!("c {}:* rwm", self.major),
        }
    }
}

/// Everything a container may open: its nodes, the pty multiplexer and the pty slaves.
pub fn allow_rules(privileged: bool, host_has_fuse: bool) -> Vec<AllowRule> {
    let mut rules: Vec<AllowRule> = nodes(privileged, host_has_fuse)
        .iter()
        .map(|n| AllowRule {
            major: n.major,
            minor: Some(n.minor),
        })
        .collect();
    rules.push(AllowRule {
        major: 5,
        minor: Some(2),
    }); // /dev/ptmx
    rules.push(AllowRule {
        major: 136,
        minor: None,
    }); // /dev/pts/*
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprivileged_containers_get_the_standard_nodes_and_ptys_only() {
        let lines: Vec<String> = allow_rules(false, true)
            .iter()
            .map(AllowRule::v1_line)
            .collect();
        assert_eq!(
            lines,
            [
                "c 1:3 rwm",
                "c 1:5 rwm",
                "c 1:7 rwm",
                "c 1:8 rwm",
                "c 1:9 rwm",
                "c 5:0 rwm",
                "c 5:2 rwm",
                "c 136:* rwm"
            ]
        );
    }

    #[test]
    fn privileged_containers_add_fuse_when_the_host_has_it() {
        assert!(allow_rules(true, true).contains(&AllowRule {
            major: 10,
            minor: Some(229)
        }));
        assert!(!allow_rules(true, false).iter().any(|r| r.major == 10));
        assert!(nodes(true, true).contains(&FUSE));
        assert!(!nodes(false, true).contains(&FUSE));
    }
}
