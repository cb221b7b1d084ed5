//! gdn's per-container TCP sysctls (`--tcp-keepalive-*`, `--tcp-retries*`): written into each
//! container's network namespace when its network is set up, never the host's. A new network
//! namespace starts with the kernel's defaults, not the host's settings, so a flag left unset
//! (or 0, as gdn reads it) carries the host's value in, as gdn does.

use crate::host::{HostError, HostResult};

/// The flags' values; `None` or 0: the host's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpSysctls {
    pub keepalive_time: Option<u32>,
    pub keepalive_interval: Option<u32>,
    pub keepalive_probes: Option<u32>,
    pub retries1: Option<u32>,
    pub retries2: Option<u32>,
}

impl TcpSysctls {
    /// Each sysctl (as under /proc/sys) with the value containers get: the flag's, or the
    /// host's as read now.
    pub fn resolve(&self) -> HostResult<Vec<(String, String)>> {
        [
            ("net/ipv4/tcp_keepalive_time", self.keepalive_time),
            ("net/ipv4/tcp_keepalive_intvl", self.keepalive_interval),
            ("net/ipv4/tcp_keepalive_probes", self.keepalive_probes),
            ("net/ipv4/tcp_retries1", self.retries1),
            ("net/ipv4/tcp_retries2", self.retries2),
        ]
        .into_iter()
        .map(|(name, flag)| {
            let value = match flag {
                Some(v) if v != 0 => v.to_string(),
                _ => {
                    let path = format!("/proc/sys/{name}");
                    std::fs::read_to_string(&path)
                        .map_err(|e| HostError::io(format!("read {path}"), e))?
                        .trim()
                        .to_string()
                }
            };
            Ok((name.to_string(), value))
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_and_unset_ones_carry_the_hosts_value() {
        let resolved = TcpSysctls {
            keepalive_time: Some(123),
            keepalive_probes: Some(0),
            ..Default::default()
        }
        .resolve()
        .expect("host sysctls readable");
        let host = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/{name}"))
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(resolved.len(), 5);
        assert_eq!(
            resolved[0],
            ("net/ipv4/tcp_keepalive_time".into(), "123".into())
        );
        for (name, value) in &resolved[1..] {
            assert_eq!(*value, host(name), "{name}");
        }
    }
}
