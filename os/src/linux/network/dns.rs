//! The container's /etc/hosts and /etc/resolv.conf, compiled as gdn compiles them.

use std::net::{IpAddr, Ipv4Addr};

/// Operator settings for name resolution inside containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSettings {
    /// `--dns-server`: when set, these replace the host's nameservers.
    pub dns_servers: Vec<IpAddr>,
    /// `--additional-dns-server`: appended after the others.
    pub additional_dns_servers: Vec<IpAddr>,
    /// `--additional-host-entry`: extra /etc/hosts lines, verbatim.
    pub additional_host_entries: Vec<String>,
}

/// `127.0.0.1 localhost`, the container's address with its hostname, then the operator's
/// extra entries, one per line.
pub fn hosts_file(container_ip: Ipv4Addr, hostname: &str, settings: &DnsSettings) -> String {
    let mut out = format!("127.0.0.1 localhost\n{container_ip} {hostname}\n");
    for entry in &settings.additional_host_entries {
        out.push_str(entry);
        out.push('\n');
    }
    out
}

/// The container's resolv.conf.
///
/// With operator DNS servers: exactly those, then the additional ones. Otherwise the host's
/// file, line by line, without nameservers on 127.x (unreachable from the container's own
/// loopback), then the additional servers. A host file that is nothing but one loopback
/// nameserver (a local resolver) becomes a nameserver on the container's gateway, as gdn does.
pub fn resolv_conf(host_resolv_conf: &str, gateway: Ipv4Addr, settings: &DnsSettings) -> String {
    let mut out = String::new();
    let mut nameserver = |ip: &dyn std::fmt::Display| out.push_str(&format!("nameserver {ip}\n"));
    if !settings.dns_servers.is_empty() {
        for ip in settings
            .dns_servers
            .iter()
            .chain(&settings.additional_dns_servers)
        {
            nameserver(ip);
        }
        return out;
    }
    if is_single_loopback_nameserver(host_resolv_conf) {
        nameserver(&gateway);
        for ip in &settings.additional_dns_servers {
            nameserver(ip);
        }
        return out;
    }
    let mut lines = String::new();
    for line in host_resolv_conf.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() != Some(&"nameserver") {
            lines.push_str(line);
            lines.push('\n');
            continue;
        }
        if fields.len() != 2 || fields[1].starts_with("127.") {
            continue;
        }
        lines.push_str(&format!("nameserver {}\n", fields[1]));
    }
    for ip in &settings.additional_dns_servers {
        lines.push_str(&format!("nameserver {ip}\n"));
    }
    lines
}

fn is_single_loopback_nameserver(file: &str) -> bool {
    let fields: Vec<&str> = file.split_whitespace().collect();
    matches!(fields.as_slice(), ["nameserver", ip] if ip.starts_with("127.") && ip.parse::<Ipv4Addr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 2);

    #[test]
    fn hosts_file_has_localhost_then_the_container() {
        let settings = DnsSettings {
            additional_host_entries: vec!["1.2.3.4 foo".into()],
            ..Default::default()
        };
        assert_eq!(
            hosts_file(Ipv4Addr::new(10, 254, 0, 1), "my-handle", &settings),
            "127.0.0.1 localhost\n10.254.0.1 my-handle\n1.2.3.4 foo\n"
        );
    }

    #[test]
    fn operator_servers_replace_the_hosts() {
        let settings = DnsSettings {
            dns_servers: vec!["1.1.1.1".parse().unwrap()],
            additional_dns_servers: vec!["9.9.9.9".parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(
                "nameserver 8.8.8.8\nsearch example.com\n",
                GATEWAY,
                &settings
            ),
            "nameserver 1.1.1.1\nnameserver 9.9.9.9\n"
        );
    }

    #[test]
    fn host_file_is_copied_without_loopback_nameservers() {
        let host = "# comment\nsearch corp\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver bad extra\noptions edns0\n";
        assert_eq!(
            resolv_conf(host, GATEWAY, &DnsSettings::default()),
            "# comment\nsearch corp\nnameserver 10.0.0.2\noptions edns0\n"
        );
    }

    #[test]
    fn a_lone_local_resolver_becomes_the_gateway() {
        assert_eq!(
            resolv_conf(
                "  nameserver 127.0.0.53\n",
                GATEWAY,
                &DnsSettings::default()
            ),
            "nameserver 10.254.0.2\n"
        );
        // With other lines around it, gdn drops it instead (leaving no nameserver).
        assert_eq!(
            resolv_conf(
                "nameserver 127.0.0.53\noptions edns0\n",
                GATEWAY,
                &DnsSettings::default()
            ),
            "options edns0\n"
        );
    }

    #[test]
    fn additional_servers_follow_the_hosts() {
        let settings = DnsSettings {
            additional_dns_servers: vec!["9.9.9.9".parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(
            resolv_conf("nameserver 10.0.0.2\n", GATEWAY, &settings),
            "nameserver 10.0.0.2\nnameserver 9.9.9.9\n"
        );
        assert_eq!(resolv_conf("", GATEWAY, &settings), "nameserver 9.9.9.9\n");
    }
}
