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

/// Which devices a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// Character and block devices (`a`).
    All,
    Char,
    Block,
}

/// What a rule allows: read, write, mknod (`r`, `w`, `m`), as bits in the order of the kernel's
/// `BPF_DEVCG_ACC_*` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(u8);

impl Access {
    pub const MKNOD: Access = Access(1);
    pub const READ: Access = Access(2);
    pub const WRITE: Access = Access(4);
    pub const ALL: Access = Access(7);

    pub fn bits(self) -> u8 {
        self.0
    }

    /// `rwm`, `r`, `mw`…: each letter at most once, at least one.
    pub fn parse(letters: &str) -> Option<Access> {
        let mut bits = 0u8;
        for letter in letters.chars() {
            let bit = match letter {
                'r' => Access::READ.0,
                'w' => Access::WRITE.0,
                'm' => Access::MKNOD.0,
                _ => return None,
            };
            if bits & bit != 0 {
                return None;
            }
            bits |= bit;
        }
        (bits != 0).then_some(Access(bits))
    }

    fn letters(self) -> String {
        [
            (Access::READ, 'r'),
            (Access::WRITE, 'w'),
            (Access::MKNOD, 'm'),
        ]
        .iter()
        .filter(|(a, _)| self.0 & a.0 != 0)
        .map(|(_, l)| *l)
        .collect()
    }
}

/// One allow rule, as in a v1 `devices.allow` line: kind, `major:minor` (`None` = any) and
/// access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowRule {
    pub kind: DeviceKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: Access,
}

impl AllowRule {
    /// Full access to character device `major:minor` (`None` = any minor).
    pub const fn char(major: u32, minor: Option<u32>) -> AllowRule {
        AllowRule {
            kind: DeviceKind::Char,
            major: Some(major),
            minor,
            access: Access::ALL,
        }
    }

    /// The v1 `devices.allow` line.
    pub fn v1_line(&self) -> String {
        let kind = match self.kind {
            DeviceKind::All => 'a',
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        };
        let number = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        format!(
            "{kind} {}:{} {}",
            number(self.major),
            number(self.minor),
            self.access.letters()
        )
    }

    /// gdn's `--device-cgroup-rule` syntax: `TYPE MAJOR:MINOR ACCESS`, fields separated by
    /// single spaces, numbers or `*`.
    pub fn parse(value: &str) -> Result<AllowRule, String> {
        let fields: Vec<&str> = value.split(' ').collect();
        let [kind, numbers, access] = fields[..] else {
            return Err(format!("invalid device specification: {value}"));
        };
        let kind = match kind {
            "a" => DeviceKind::All,
            "c" => DeviceKind::Char,
            "b" => DeviceKind::Block,
            _ => return Err(format!("invalid device type (a, b or c): {value}")),
        };
        let Some((major, minor)) = numbers.split_once(':') else {
            return Err(format!("invalid device versions: {value}"));
        };
        let number = |n: &str, which: &str| match n {
            "*" => Ok(None),
            n => n
                .parse::<u32>()
                .map(Some)
                .map_err(|_| format!("invalid device {which} version: {value}")),
        };
        Ok(AllowRule {
            kind,
            major: number(major, "major")?,
            minor: number(minor, "minor")?,
            access: Access::parse(access)
                .ok_or_else(|| format!("invalid device access (r, w, m): {value}"))?,
        })
    }

    /// Whether an operator's rule stands in for this built-in one, as gdn decides: same kind,
    /// and the same numbers or both wildcards.
    fn replaced_by(&self, rule: &AllowRule) -> bool {
        self.kind == rule.kind
            && ((rule.major.is_none() && rule.minor.is_none())
                || (self.major == rule.major && self.minor == rule.minor))
    }
}

/// Everything a container may open: its nodes, the pty multiplexer and the pty slaves; for
/// privileged containers, also the operator's `extra` rules (gdn's `--device-cgroup-rule`),
/// each replacing the built-in rules it names.
pub fn allow_rules(privileged: bool, host_has_fuse: bool, extra: &[AllowRule]) -> Vec<AllowRule> {
    let mut rules: Vec<AllowRule> = nodes(privileged, host_has_fuse)
        .iter()
        .map(|n| AllowRule::char(n.major, Some(n.minor)))
        .collect();
    rules.push(AllowRule::char(5, Some(2))); // /dev/ptmx
    rules.push(AllowRule::char(136, None)); // /dev/pts/*
    if !privileged {
        return rules;
    }
    rules.retain(|built_in| !extra.iter().any(|rule| built_in.replaced_by(rule)));
    extra.iter().copied().chain(rules).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprivileged_containers_get_the_standard_nodes_and_ptys_only() {
        let lines: Vec<String> = allow_rules(false, true, &[])
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
        assert!(allow_rules(true, true, &[]).contains(&AllowRule::char(10, Some(229))));
        assert!(!allow_rules(true, false, &[])
            .iter()
            .any(|r| r.major == Some(10)));
        assert!(nodes(true, true).contains(&FUSE));
        assert!(!nodes(false, true).contains(&FUSE));
    }

    #[test]
    fn operator_rules_reach_privileged_containers_only_and_replace_what_they_name() {
        let extra = [
            AllowRule::parse("c 1:3 r").expect("parses"),
            AllowRule::parse("b 7:* rw").expect("parses"),
        ];
        let lines: Vec<String> = allow_rules(true, false, &extra)
            .iter()
            .map(AllowRule::v1_line)
            .collect();
        assert_eq!(
            lines,
            [
                "c 1:3 r",
                "b 7:* rw",
                "c 1:5 rwm",
                "c 1:7 rwm",
                "c 1:8 rwm",
                "c 1:9 rwm",
                "c 5:0 rwm",
                "c 5:2 rwm",
                "c 136:* rwm"
            ]
        );
        assert_eq!(
            allow_rules(false, false, &extra),
            allow_rules(false, false, &[])
        );
        // A wildcard rule of a kind replaces every built-in rule of that kind.
        let all_chars = [AllowRule::parse("c *:* rwm").expect("parses")];
        assert_eq!(allow_rules(true, false, &all_chars), all_chars);
    }

    #[test]
    fn rules_parse_as_gdn_reads_them() {
        let rule = AllowRule::parse("a *:* m").expect("parses");
        assert_eq!(rule.kind, DeviceKind::All);
        assert_eq!((rule.major, rule.minor), (None, None));
        assert_eq!(rule.access, Access::MKNOD);
        assert_eq!(rule.v1_line(), "a *:* m");
        assert_eq!(
            AllowRule::parse("c 10:200 wr").expect("parses").v1_line(),
            "c 10:200 rw"
        );
        for bad in [
            "c 1:3",
            "c  1:3 rwm",
            "c 1-3 rwm",
            "x 1:3 rwm",
            "c a:3 rwm",
            "c 1:3 rwx",
            "c 1:3 rr",
            "c 1:3 ",
            "c -1:3 rwm",
        ] {
            assert!(AllowRule::parse(bad).is_err(), "{bad:?}");
        }
    }
}
