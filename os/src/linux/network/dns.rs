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

/// `127.0.0.1 localhost`, the container's address with its hostname (once known: a network
/// plugin tells it after the container started), then the operator's extra entries, one per
/// line.
pub fn hosts_file(container_ip: Option<&str>, hostname: &str, settings: &DnsSettings) -> String {
    let mut out = String::from("127.0.0.1 localhost\n");
    if let Some(ip) = container_ip {
        out.push_str(&format!("{ip} {hostname}\n"));
    }
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

/// What a network plugin's `up` answered about name resolution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginDns {
    /// `Some`, even empty: exactly these nameservers, no others.
    pub nameservers: Option<Vec<String>>,
    /// `Some`: one `search` line of these, in place of the host's.
    pub search_domains: Option<Vec<String>>,
}

/// The resolv.conf of a container a network plugin wired, as guardian compiles it: the
/// plugin's nameservers if it named any, else as [`resolv_conf`] with the container's own
/// address standing for the gateway; the plugin's search domains last.
pub fn plugin_resolv_conf(
    host_resolv_conf: &str,
    container_ip: Ipv4Addr,
    settings: &DnsSettings,
    plugin: &PluginDns,
) -> String {
    let mut out = match &plugin.nameservers {
        Some(servers) => servers
            .iter()
            .map(|ip| format!("nameserver {ip}\n"))
            .collect(),
        None if plugin.search_domains.is_some() => {
            let without_search: String = host_resolv_conf
                .lines()
                .filter(|line| !line.starts_with("search"))
                .map(|line| format!("{line}\n"))
                .collect();
            resolv_conf(&without_search, container_ip, settings)
        }
        None => resolv_conf(host_resolv_conf, container_ip, settings),
    };
    if let Some(domains) = &plugin.search_domains {
        out.push_str(&format!("search {}\n", domains.join(" ")));
    }
    out
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
            hosts_file(Some("10.254.0.1"), "my-handle", &settings),
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

    #[test]
    fn a_plugins_nameservers_replace_all_others_and_its_search_domains_the_hosts() {
        let settings = DnsSettings {
            dns_servers: vec!["1.1.1.1".parse().unwrap()],
            additional_dns_servers: vec!["9.9.9.9".parse().unwrap()],
            ..Default::default()
        };
        let plugin = PluginDns {
            nameservers: Some(vec!["192.0.2.53".into()]),
            search_domains: Some(vec!["a.test".into(), "b.test".into()]),
        };
        assert_eq!(
            plugin_resolv_conf("search corp\n", GATEWAY, &settings, &plugin),
            "nameserver 192.0.2.53\nsearch a.test b.test\n"
        );
        let search_only = PluginDns {
            nameservers: None,
            search_domains: Some(vec!["a.test".into()]),
        };
        assert_eq!(
            plugin_resolv_conf(
                "search corp\nnameserver 10.0.0.2\n",
                GATEWAY,
                &DnsSettings::default(),
                &search_only
            ),
            "nameserver 10.0.0.2\nsearch a.test\n"
        );
        assert_eq!(
            plugin_resolv_conf(
                "nameserver 10.0.0.2\n",
                GATEWAY,
                &settings,
                &PluginDns::default()
            ),
            "nameserver 1.1.1.1\nnameserver 9.9.9.9\n"
        );
    }

    #[test]
    fn hosts_file_before_the_address_is_known() {
        assert_eq!(
            hosts_file(None, "h", &DnsSettings::default()),
            "127.0.0.1 localhost\n"
        );
    }
}
