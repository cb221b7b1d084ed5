//! Container networking (the networker): a network namespace per container, a veth pair from
//! it to a bridge per subnet (which holds the gateway address), NAT, port mappings, a
//! default-deny egress firewall, bandwidth limits, and the container's hosts and resolv.conf.
//!
//! One file per concern: `netns` (namespaces), `netlink` (links, addresses, routes),
//! `firewall` (nftables; `nftnl` its netlink encoder), `bandwidth` (tc), `dns`
//! (hosts and resolv.conf), `arp` (announcing a reused address), `naming` (interface and chain
//! names), `state` (what each container holds, by handle), `deferred` (the workers that
//! finish removals and send ARP announcements).
//!
//! Setup writes the container's state file first, then creates; teardown finds everything
//! from that file and removes it, and succeeds when there is nothing left. A failed setup
//! tears down what it made.

pub mod arp;
pub mod bandwidth;
mod deferred;
pub mod dns;
pub mod firewall;
pub mod naming;
pub mod netlink;
pub mod netns;
pub mod nftnl;
pub mod plugin;
pub mod state;
pub mod sysctl;

use super::LinuxConfig;
use crate::host::{HostError, HostResult};
use crate::layout::Layout;
use firewall::{ContainerRules, Firewall, FirewallSettings, Ruleset};
use naming::LinkNames;
use nix::fcntl::{Flock, FlockArg};
use state::{NetworkState, StateStore};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use trellis_core::api::{NetOutRule, NetworkStat, PortMapping};
use trellis_core::effect::{NetworkConfig, PluginUpConfig};
use trellis_core::network::NetworkAssignment;

pub use dns::DnsSettings;

/// Operator settings for container networking (the server's networking flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// `--mtu`: of the container's interface, its host end and the bridge.
    pub mtu: u32,
    pub dns: DnsSettings,
    pub firewall: FirewallSettings,
    /// The host's resolver configuration, the source of containers' resolv.conf.
    pub host_resolv_conf: PathBuf,
    /// `--tag`: up to 2 letters or digits in the names of our bridges and nftables table, so
    /// that two servers (or tests) on one host leave each other alone.
    pub tag: String,
    /// `--tcp-keepalive-*`, `--tcp-retries*`: set in every container's namespace.
    pub tcp_sysctls: sysctl::TcpSysctls,
    /// `--enable-container-network-metrics`: Metrics carry the container's network counters.
    pub container_metrics: bool,
    /// `--network-plugin`: containers' networks are the plugin's to wire.
    pub plugin: Option<plugin::PluginSettings>,
    /// What the plugin's `net-in` gets as `HostIP` (`--external-ip`, else detected).
    pub external_ip: Option<Ipv4Addr>,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            mtu: 1500,
            dns: DnsSettings::default(),
            firewall: FirewallSettings::default(),
            host_resolv_conf: PathBuf::from("/etc/resolv.conf"),
            tag: String::new(),
            tcp_sysctls: Default::default(),
            container_metrics: false,
            plugin: None,
            external_ip: None,
        }
    }
}

pub struct Networker {
    layout: Layout,
    settings: NetworkSettings,
    /// Unprivileged containers' user namespace mapping: their network namespaces belong to a
    /// user namespace with it, and container root owns their /etc/hosts and resolv.conf.
    id_mapping: crate::linux::security::IdMapping,
    /// `--no-new-privileges`: unprivileged containers may open ICMP sockets (gdn's
    /// `ping_group_range`), since ping's file capabilities no longer apply.
    no_new_privileges: bool,
    /// Sysctls (as under /proc/sys) and values written into every container's namespace.
    container_sysctls: Vec<(String, String)>,
    /// With `--network-plugin`: the plugin wires what the namespace holds.
    plugin: Option<plugin::NetworkPlugin>,
    removal: Arc<Removal>,
    /// The deferred parts of removals (and the start's removal of orphaned bridges).
    deferred: deferred::DeferredWork,
    /// The gratuitous ARP announcers of containers set up recently, stopped at teardown.
    announcers: Mutex<HashMap<String, Arc<std::sync::atomic::AtomicBool>>>,
}

/// What both setup and the deferred part of a removal use.
struct Removal {
    /// The server's `--tag`, part of every name.
    tag: String,
    bridge_prefix: String,
    locks_dir: PathBuf,
    states: StateStore,
    firewall: Firewall,
    /// The handles holding each container address: its `containers` element goes only when
    /// none does (a freed address is handed out again at once, before the old container's
    /// deferred removal runs).
    address_holders: Mutex<HashMap<Ipv4Addr, BTreeSet<String>>>,
}

/// Threads finishing removals: enough to keep up with destroys as fast as the server makes
/// them (each removal waits on several RCU grace periods).
const DEFERRED_WORKERS: usize = 4;

/// How long a torn-down container's links, chain and possibly empty bridge stay.
const BRIDGE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// The host's address as others see it: the first IPv4 address of the interface holding the
/// default route. Read from the kernel's tables; no packet is sent. `None` without a default
/// route.
pub fn detect_external_ip() -> HostResult<Option<Ipv4Addr>> {
    netlink::with_netlink(None, |nl| nl.default_route_address())
}

/// The host's own IPv4 networks, which no container subnet may overlap: the subnet of every
/// address and every route of the main table but the default one. What is on Trellis's own
/// bridges (`trbr*`, this server's or another's: the pool's subnets and static container
/// subnets) is the containers' and left out. Reads kernel state only.
pub fn host_networks() -> HostResult<Vec<ipnetwork::Ipv4Network>> {
    netlink::with_netlink(None, |nl| {
        let ours: std::collections::BTreeSet<u32> = nl
            .links()?
            .into_iter()
            .filter(|link| link.name.starts_with(naming::BRIDGE_PREFIX))
            .map(|link| link.index)
            .collect();
        let mut networks: Vec<ipnetwork::Ipv4Network> = nl
            .ipv4_networks()?
            .into_iter()
            .filter(|(_, link)| !link.is_some_and(|index| ours.contains(&index)))
            .map(|(network, _)| network)
            .collect();
        networks.sort();
        networks.dedup();
        Ok(networks)
    })
}

fn write_sysctl(path: &str, value: &str) -> HostResult<()> {
    std::fs::write(path, value).map_err(|e| HostError::io(format!("write {path}"), e))
}

impl Networker {
    pub fn new(config: &LinuxConfig) -> HostResult<Networker> {
        let layout = config.layout.clone();
        let settings = config.network.clone();
        if settings.mtu < 68 || settings.mtu > 65535 {
            return Err(HostError::Invalid(format!(
                "invalid MTU {}: must be between 68 and 65535",
                settings.mtu
            )));
        }
        if !naming::is_valid_tag(&settings.tag) {
            return Err(HostError::Invalid(format!(
                "invalid tag '{}': at most 2 letters or digits",
                settings.tag
            )));
        }
        let bridge_prefix = naming::bridge_prefix(&settings.tag);
        let ruleset = Ruleset {
            table: format!("ip trellis{}", settings.tag),
            bridge_prefix: bridge_prefix.clone(),
        };
        let states = StateStore::new(layout.network_state_dir())?;
        for dir in [layout.network_locks_dir(), layout.netns_dir()] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| HostError::io(format!("create {}", dir.display()), e))?;
        }
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        let container_sysctls = settings.tcp_sysctls.resolve()?;
        let firewall = Firewall::new(ruleset);
        firewall.install_globals(&settings.firewall)?;
        let mut address_holders: HashMap<Ipv4Addr, BTreeSet<String>> = HashMap::new();
        for handle in states.handles()? {
            if let Some(state) = states.load(&handle)? {
                address_holders
                    .entry(state.assignment.container_ip)
                    .or_default()
                    .insert(handle);
            }
        }
        let removal = Arc::new(Removal {
            tag: settings.tag.clone(),
            bridge_prefix,
            locks_dir: layout.network_locks_dir(),
            states,
            firewall,
            address_holders: Mutex::new(address_holders),
        });
        // Removals a crash or a stop cut short, then container chains nothing accounts for.
        let states = &removal.states;
        for state in states.retired()? {
            // What cannot be finished now stays retired for the next start; it must not keep
            // this one from serving the containers that are still there.
            if let Err(e) = removal.finish(&state) {
                tracing::warn!(handle = %state.handle, "network cleanup left for the next start: {e}");
            }
        }
        let mut live_ids = BTreeSet::new();
        for handle in states.handles()? {
            live_ids.extend(states.load(&handle)?.map(|s| s.id));
        }
        removal.firewall.remove_chains_unless(
            &naming::firewall_table_prefix(&removal.tag),
            |chain| {
                chain
                    .strip_prefix("c-")
                    .is_some_and(|id| live_ids.contains(id))
            },
        )?;
        // Bridges a crash left empty are removed in the background: listing every link of
        // the host takes about 0.1 s when thousands exist (this server's and others'), and
        // nothing before serving needs them gone (a create on the subnet takes the bridge's
        // lock and uses the bridge, or waits until it is gone).
        let deferred = deferred::DeferredWork::start("network-deferred", DEFERRED_WORKERS);
        let orphans = removal.clone();
        deferred.schedule(std::time::Instant::now(), move || {
            if let Err(e) = orphans.remove_orphan_bridges() {
                tracing::warn!("removing bridges left without containers: {e}");
            }
        });
        let plugin = match &settings.plugin {
            Some(plugin_settings) => Some(plugin::NetworkPlugin::new(
                plugin_settings.clone(),
                settings.external_ip,
                plugin::states_dir(&layout.network_state_dir()),
            )?),
            None => None,
        };
        Ok(Networker {
            plugin,
            layout,
            settings,
            id_mapping: config.security.id_mapping.clone(),
            no_new_privileges: config.security.no_new_privileges,
            container_sysctls,
            removal,
            deferred,
            announcers: Default::default(),
        })
    }

    fn bridge_of(&self, subnet: ipnetwork::Ipv4Network) -> String {
        naming::bridge_name(&self.removal.bridge_prefix, subnet)
    }
}

impl Removal {
    /// Removes bridges of ours with no container attached (left by a crash or an older
    /// server).
    fn remove_orphan_bridges(&self) -> HostResult<()> {
        let prefix = &self.bridge_prefix;
        let bridges: Vec<String> = netlink::with_netlink(None, |nl| {
            let links = nl.links()?;
            Ok(links
                .iter()
                .filter(|l| l.name.starts_with(prefix))
                .filter(|b| !links.iter().any(|l| l.controller == Some(b.index)))
                .map(|b| b.name.clone())
                .collect())
        })?;
        for bridge in bridges {
            let _lock = self.lock_bridge(&bridge)?;
            netlink::with_netlink(None, |nl| delete_bridge_if_unused(nl, &bridge))?;
        }
        Ok(())
    }

    /// Serialises creating and deleting a subnet's bridge across threads and processes.
    fn lock_bridge(&self, bridge: &str) -> HostResult<Flock<std::fs::File>> {
        lock_file(&self.locks_dir.join(bridge))
    }

    /// The deferred part of a torn-down container's removal: its chain and dispatch entry, its
    /// `containers` element unless another container holds the address, its links, its bridge
    /// if no other container uses it, and last its retired state. Under the bridge lock, so a
    /// create on the same subnet does not race the bridge's deletion.
    fn finish(&self, state: &NetworkState) -> HostResult<()> {
        let names = LinkNames::for_id(&self.tag, &state.id);
        let bridge = naming::bridge_name(&self.bridge_prefix, state.assignment.subnet);
        let _lock = self.lock_bridge(&bridge)?;
        let rules = Networker::rules(state, &names);
        let firewall = self.firewall.remove_container(&rules).and_then(|()| {
            // Held through the deletion, so that a setup taking the address meanwhile adds its
            // element after this deletion, not before.
            let holders = self
                .address_holders
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let held = holders
                .get(&state.assignment.container_ip)
                .is_some_and(|h| !h.is_empty());
            if held {
                Ok(())
            } else {
                self.firewall.forget_address(&rules)
            }
        });
        // The links go whether or not the firewall part failed; the state stays until all did.
        let links = netlink::with_netlink(None, |nl| {
            for link in [&names.host_veth, &names.ifb] {
                nl.delete_link(link)?;
            }
            delete_bridge_if_unused(nl, &bridge)
        });
        firewall?;
        links?;
        self.states.forget_retired(&state.id)
    }

    fn hold_address(&self, ip: Ipv4Addr, handle: &str) {
        self.address_holders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(ip)
            .or_default()
            .insert(handle.to_string());
    }

    fn release_address(&self, ip: Ipv4Addr, handle: &str) {
        let mut holders = self
            .address_holders
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(h) = holders.get_mut(&ip) {
            h.remove(handle);
            if h.is_empty() {
                holders.remove(&ip);
            }
        }
    }
}

fn lock_file(path: &std::path::Path) -> HostResult<Flock<std::fs::File>> {
    {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| HostError::io(format!("open {}", path.display()), e))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| HostError::sys(format!("lock {}", path.display()), e))
    }
}

impl Networker {
    fn rules<'a>(state: &'a NetworkState, names: &'a LinkNames) -> ContainerRules<'a> {
        ContainerRules {
            handle: &state.handle,
            table: &names.firewall_table,
            chain: &names.firewall_chain,
            device: &names.host_veth,
            subnet: state.assignment.subnet,
            ip: state.assignment.container_ip,
        }
    }

    pub fn setup(&self, handle: &str, config: &NetworkConfig) -> HostResult<()> {
        let result = match &self.plugin {
            Some(plugin) => self.try_setup_for_plugin(plugin, handle, config),
            None => self.try_setup(handle, config),
        };
        match &result {
            Ok(()) => {
                tracing::debug!(handle, ip = %config.assignment.container_ip, "network set up")
            }
            Err(e) => {
                tracing::debug!(handle, "network setup failed, undoing it: {e}");
                // Undo whatever part was made; the original error is what the caller needs.
                if let Err(undo) = self.teardown(handle, Some(&config.assignment)) {
                    tracing::warn!(handle, "undoing a failed network setup: {undo}");
                }
            }
        }
        result
    }

    fn try_setup(&self, handle: &str, config: &NetworkConfig) -> HostResult<()> {
        let assignment = config.assignment;
        let state = match self.removal.states.load(handle)? {
            Some(existing) if existing.assignment == assignment => existing,
            Some(_) => {
                self.teardown(handle, None)?;
                self.new_state(handle, assignment)?
            }
            None => self.new_state(handle, assignment)?,
        };
        let state = NetworkState {
            port_mappings: config.port_mappings.clone(),
            bandwidth: config.bandwidth,
            ..state
        };
        for mapping in &state.port_mappings {
            check_host_port_free(mapping.host_port)?;
        }
        self.removal.states.save(&state)?;

        let netns_path = self.layout.netns_file(handle);
        let owner = (!config.privileged).then_some(&self.id_mapping);
        netns::create(&netns_path, owner)?;
        let netns_file = std::fs::File::open(&netns_path)
            .map_err(|e| HostError::io(format!("open {}", netns_path.display()), e))?;
        let names = LinkNames::for_id(&self.removal.tag, &state.id);
        let bridge = self.bridge_of(assignment.subnet);
        let mtu = self.settings.mtu;
        let gateway = assignment.gateway_ip();
        let prefix = assignment.subnet.prefix();
        {
            let _lock = self.removal.lock_bridge(&bridge)?;
            self.removal.hold_address(assignment.container_ip, handle);
            netlink::with_netlink(None, |nl| {
                let mac = naming::random_mac().map_err(|e| HostError::io("read random MAC", e))?;
                let bridge_index = nl.ensure_bridge(&bridge, mac, mtu)?;
                nl.ensure_address(bridge_index, gateway, prefix)?;
                nl.set_up(bridge_index, None)?;
                // Lets host-local clients (127.0.0.1) reach published ports: their DNATed
                // packets leave through the bridge before being masqueraded.
                write_sysctl(
                    &format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"),
                    "1",
                )?;
                if nl.link(&names.host_veth)?.is_none() {
                    nl.create_veth(&names.host_veth, &names.container_veth, mtu, &netns_file)?;
                }
                let host_end = nl.link(&names.host_veth)?.ok_or_else(|| {
                    HostError::Unexpected(format!(
                        "veth {} vanished after creation",
                        names.host_veth
                    ))
                })?;
                nl.attach_to_bridge(host_end.index, bridge_index, handle)?;
                nl.forget_neighbour(bridge_index, assignment.container_ip)
            })?;
        }
        netlink::with_netlink(Some(&netns_path), |nl| {
            let lo = nl.link("lo")?.ok_or_else(|| {
                HostError::Unexpected("no loopback in the container namespace".into())
            })?;
            nl.set_up(lo.index, None)?;
            let link = nl.link(&names.container_veth)?.ok_or_else(|| {
                HostError::Unexpected(format!(
                    "{} is missing from the container's namespace",
                    names.container_veth
                ))
            })?;
            nl.ensure_address(link.index, assignment.container_ip, prefix)?;
            nl.set_up(link.index, Some(mtu))?;
            // Containers sharing the subnet may remember a reused address's old MAC (the
            // host's own entry is forgotten above).
            if let Some(mac) = link.mac {
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                arp::Announcer::open(link.index, mac, assignment.container_ip)?
                    .announce_later(&self.deferred, stop.clone());
                self.announcers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(handle.to_string(), stop);
            }
            nl.ensure_default_route(gateway)
        })?;

        netns::write_sysctls(&netns_path, &self.namespace_sysctls(config.privileged))?;
        let owner = (!config.privileged)
            .then(|| (self.id_mapping.root_uid(), self.id_mapping.root_gid()))
            .or(Some((0, 0)));
        self.write_builtin_dns_files(handle, &assignment, owner)?;
        self.removal.firewall.add_container(
            &Self::rules(&state, &names),
            &config.netout_rules,
            &state.port_mappings,
        )?;
        if state.bandwidth.rate > 0 {
            netlink::with_netlink(None, |nl| nl.create_ifb(&names.ifb))?;
            bandwidth::run_tc_batch(&bandwidth::tc_batch(
                &names.host_veth,
                &names.ifb,
                &state.bandwidth,
                mtu,
            ))?;
        }
        Ok(())
    }

    /// With a network plugin: the namespace (with its sysctls) and the DNS files the init
    /// binds, the address still unknown; the plugin wires the namespace once the init runs
    /// ([`Networker::connect`]).
    fn try_setup_for_plugin(
        &self,
        plugin: &plugin::NetworkPlugin,
        handle: &str,
        config: &NetworkConfig,
    ) -> HostResult<()> {
        if plugin.load(handle)?.is_none() {
            plugin.save(
                handle,
                &plugin::PluginState {
                    assignment: config.assignment,
                    container_ip: None,
                    interface: None,
                    port_mappings: Vec::new(),
                },
            )?;
        }
        let netns_path = self.layout.netns_file(handle);
        let owner = (!config.privileged).then_some(&self.id_mapping);
        netns::create(&netns_path, owner)?;
        netns::write_sysctls(&netns_path, &self.namespace_sysctls(config.privileged))?;
        let hosts = dns::hosts_file(
            None,
            &trellis_core::handle::hostname(handle),
            &self.settings.dns,
        );
        let owner =
            (!config.privileged).then(|| (self.id_mapping.root_uid(), self.id_mapping.root_gid()));
        self.write_dns_files(handle, &hosts, "", owner)
    }

    /// With a network plugin: its `up` for the container whose init is `pid`; the container's
    /// DNS files get the address it answered. The properties it answered.
    pub fn connect(
        &self,
        handle: &str,
        pid: i32,
        config: &PluginUpConfig,
    ) -> HostResult<BTreeMap<String, String>> {
        let plugin = self.plugin.as_ref().ok_or_else(|| {
            HostError::Unexpected("connect-network without a network plugin".into())
        })?;
        let answer = plugin.up(
            handle,
            pid,
            &config.properties,
            &config.netin,
            &config.netout_rules,
        )?;
        let properties = answer.properties.unwrap_or_default();
        if let Some(ip) = properties.get(trellis_core::properties::CONTAINER_IP) {
            let address: Ipv4Addr = ip.parse().map_err(|_| {
                HostError::Unexpected(format!(
                    "network plugin {}: 'up' answered container address {ip:?}, not an IPv4 address",
                    plugin.path()
                ))
            })?;
            let hostname = trellis_core::handle::hostname(handle);
            let hosts = dns::hosts_file(Some(ip), &hostname, &self.settings.dns);
            let resolv = dns::plugin_resolv_conf(
                &self.host_resolv_conf()?,
                address,
                &self.settings.dns,
                &dns::PluginDns {
                    nameservers: answer.dns_servers,
                    search_domains: answer.search_domains,
                },
            );
            // In place: the init has them bound already, with their owner set at setup.
            self.write_dns_files(handle, &hosts, &resolv, None)?;
        }
        Ok(properties)
    }

    /// What is written into a container's namespace: the TCP settings, and for unprivileged
    /// containers under `--no-new-privileges` the ICMP socket range.
    fn namespace_sysctls(&self, privileged: bool) -> Vec<(String, String)> {
        let mut sysctls = self.container_sysctls.clone();
        if !privileged && self.no_new_privileges {
            sysctls.push(("net/ipv4/ping_group_range".into(), "1 65535".into()));
        }
        sysctls
    }

    fn new_state(&self, handle: &str, assignment: NetworkAssignment) -> HostResult<NetworkState> {
        Ok(NetworkState {
            handle: handle.to_string(),
            id: naming::new_id().map_err(|e| HostError::io("read random id", e))?,
            assignment,
            port_mappings: Vec::new(),
            bandwidth: Default::default(),
        })
    }

    fn host_resolv_conf(&self) -> HostResult<String> {
        match std::fs::read_to_string(&self.settings.host_resolv_conf) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(HostError::io(
                format!("read {}", self.settings.host_resolv_conf.display()),
                e,
            )),
        }
    }

    /// The container's /etc/hosts and /etc/resolv.conf as the built-in networker compiles them.
    fn write_builtin_dns_files(
        &self,
        handle: &str,
        assignment: &NetworkAssignment,
        owner: Option<(u32, u32)>,
    ) -> HostResult<()> {
        let hostname = trellis_core::handle::hostname(handle);
        let ip = assignment.container_ip.to_string();
        let hosts = dns::hosts_file(Some(&ip), &hostname, &self.settings.dns);
        let resolv = dns::resolv_conf(
            &self.host_resolv_conf()?,
            assignment.gateway_ip(),
            &self.settings.dns,
        );
        self.write_dns_files(handle, &hosts, &resolv, owner)
    }

    /// Writes the container's /etc/hosts and /etc/resolv.conf, then owned by container root
    /// (`owner`, the host ids of an unprivileged container's root; host root otherwise) unless
    /// `owner` is `None` (files already there keep theirs).
    fn write_dns_files(
        &self,
        handle: &str,
        hosts: &str,
        resolv: &str,
        owner: Option<(u32, u32)>,
    ) -> HostResult<()> {
        for (path, text) in [
            (self.layout.hosts_file(handle), hosts),
            (self.layout.resolv_conf_file(handle), resolv),
        ] {
            write_public_file(&path, text)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(|e| HostError::io(format!("chown {}", path.display()), e))?;
            }
        }
        Ok(())
    }

    /// Removes the container's network. What must go before its address or host ports are
    /// handed out again goes now: port mappings, the namespace (and with it the container's
    /// interface and MAC), the address's hold. The rest (chain, dispatch entry, links, an
    /// empty bridge) is finished by [`Removal::finish`] after a linger, on a thread of its own:
    /// nf_tables deletions and link unregistration each wait for RCU grace periods, which would
    /// otherwise dominate destroy. The state is retired first, so a crash leaves it for the
    /// next start to finish.
    pub fn teardown(&self, handle: &str, assignment: Option<&NetworkAssignment>) -> HostResult<()> {
        if let Some(plugin) = &self.plugin {
            // The plugin first: it may still need the namespace.
            plugin.down(handle)?;
            netns::remove(&self.layout.netns_file(handle))?;
            state::remove_file_if_exists(&self.layout.hosts_file(handle))?;
            state::remove_file_if_exists(&self.layout.resolv_conf_file(handle))?;
            return plugin.forget(handle);
        }
        if let Some(stop) = self
            .announcers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(handle)
        {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(state) = self.removal.states.load(handle)? {
            let names = LinkNames::for_id(&self.removal.tag, &state.id);
            self.removal
                .firewall
                .remove_ports(&Self::rules(&state, &names), &state.port_mappings)?;
            self.removal.states.retire(&state)?;
            self.removal
                .release_address(state.assignment.container_ip, handle);
            self.finish_removal_later(state);
        } else if let Some(assignment) = assignment {
            // Nothing of the container was made (its state comes first), but its subnet's
            // bridge may have been left empty by a crash.
            let bridge = self.bridge_of(assignment.subnet);
            let _lock = self.removal.lock_bridge(&bridge)?;
            netlink::with_netlink(None, |nl| delete_bridge_if_unused(nl, &bridge))?;
        }
        netns::remove(&self.layout.netns_file(handle))?;
        state::remove_file_if_exists(&self.layout.hosts_file(handle))?;
        state::remove_file_if_exists(&self.layout.resolv_conf_file(handle))?;
        self.removal.states.delete(handle)
    }

    fn require_state(&self, handle: &str) -> HostResult<NetworkState> {
        self.removal.states.load(handle)?.ok_or_else(|| {
            HostError::Unexpected(format!("container {handle} has no network set up"))
        })
    }

    pub fn map_port(
        &self,
        handle: &str,
        _assignment: &NetworkAssignment,
        mapping: &PortMapping,
    ) -> HostResult<()> {
        if let Some(plugin) = &self.plugin {
            return plugin.net_in(handle, mapping);
        }
        let mut state = self.require_state(handle)?;
        if state.port_mappings.contains(mapping) {
            return Ok(());
        }
        check_host_port_free(mapping.host_port)?;
        let names = LinkNames::for_id(&self.removal.tag, &state.id);
        // Recorded before it is made: a crash in between leaves a mapping the state names (the
        // next start holds its port, and teardown removes it, present or not) rather than a
        // forwarding rule nothing accounts for, whose port would be handed out again.
        let before = state.clone();
        state.port_mappings.push(*mapping);
        self.removal.states.save(&state)?;
        if let Err(e) = self
            .removal
            .firewall
            .map_port(&Self::rules(&before, &names), mapping)
        {
            self.removal.states.save(&before)?;
            return Err(e);
        }
        Ok(())
    }

    pub fn add_netout_rules(
        &self,
        handle: &str,
        _assignment: &NetworkAssignment,
        rules: &[NetOutRule],
    ) -> HostResult<()> {
        if let Some(plugin) = &self.plugin {
            return plugin.net_out(handle, rules);
        }
        let state = self.require_state(handle)?;
        let names = LinkNames::for_id(&self.removal.tag, &state.id);
        self.removal
            .firewall
            .add_netout(&Self::rules(&state, &names), rules)
    }

    /// The address and port mappings the host has in place for `handle`.
    pub fn observe(
        &self,
        handle: &str,
    ) -> HostResult<Option<(NetworkAssignment, Vec<PortMapping>)>> {
        if let Some(plugin) = &self.plugin {
            return Ok(plugin
                .load(handle)?
                .map(|s| (s.assignment, s.port_mappings)));
        }
        Ok(self
            .removal
            .states
            .load(handle)?
            .map(|s| (s.assignment, s.port_mappings)))
    }

    /// Every handle with a network resource: a state file or a bound namespace.
    pub fn handles(&self) -> HostResult<Vec<String>> {
        let mut handles = self.removal.states.handles()?;
        handles.extend(state::list_names(&self.layout.netns_dir())?);
        if let Some(plugin) = &self.plugin {
            handles.extend(plugin.handles()?);
        }
        handles.sort();
        handles.dedup();
        Ok(handles)
    }

    /// Bytes the container received and sent, counted on the host end of its veth (what the
    /// host end sends, the container receives).
    /// None unless `--enable-container-network-metrics`, as in gdn.
    pub fn stats(&self, handle: &str) -> HostResult<Option<NetworkStat>> {
        if !self.settings.container_metrics {
            return Ok(None);
        }
        if let Some(plugin) = &self.plugin {
            // As gdn: the interface the plugin's answer named, counted inside the namespace.
            let Some(interface) = plugin.load(handle)?.and_then(|s| s.interface) else {
                return Ok(None);
            };
            return netns::interface_counters(&self.layout.netns_file(handle), &interface);
        }
        let Some(state) = self.removal.states.load(handle)? else {
            return Ok(None);
        };
        let names = LinkNames::for_id(&self.removal.tag, &state.id);
        // The host veth's counters from sysfs: two small reads, where a netlink query costs a
        // thread, a runtime and a socket, per container in every BulkMetrics. The host side
        // receives what the container sends.
        let counter = |name: &str| -> HostResult<Option<u64>> {
            let path = format!("/sys/class/net/{}/statistics/{name}", names.host_veth);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(text.trim().parse().ok()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(HostError::io(format!("read {path}"), e)),
            }
        };
        Ok(match (counter("tx_bytes")?, counter("rx_bytes")?) {
            (Some(rx_bytes), Some(tx_bytes)) => Some(NetworkStat { rx_bytes, tx_bytes }),
            _ => None,
        })
    }

    /// Runs [`Removal::finish`] on a deferred-work thread after [`BRIDGE_LINGER`]: a create
    /// on the same subnet soon after (the pool hands the freed subnet out again) then finds
    /// the bridge in use and it stays, instead of being deleted and made again.
    /// [`Networker::settle`] waits for it, and a start after a crash finishes it.
    fn finish_removal_later(&self, state: NetworkState) {
        let removal = self.removal.clone();
        self.deferred.schedule(
            std::time::Instant::now() + BRIDGE_LINGER,
            move || match removal.finish(&state) {
                Ok(()) => tracing::debug!(handle = %state.handle, "network removal finished"),
                Err(e) => tracing::warn!(
                    handle = %state.handle,
                    "network cleanup left for the next start: {e}"
                ),
            },
        );
    }

    /// Waits until every link and bridge removal started by a teardown, and the start's
    /// removal of bridges left empty, is done (without waiting out their linger).
    pub fn settle(&self) {
        self.deferred.settle();
    }

    pub fn settings(&self) -> &NetworkSettings {
        &self.settings
    }
}

fn delete_bridge_if_unused(nl: &netlink::Netlink, bridge: &str) -> HostResult<()> {
    let Some(link) = nl.link(bridge)? else {
        return Ok(());
    };
    if nl.has_ports(link.index)? {
        Ok(())
    } else {
        nl.delete_link(bridge)
    }
}

/// Readable by everyone in the container, writable by its owner (container root, once the
/// runtime gives it the container's root uid).
fn write_public_file(path: &std::path::Path, text: &str) -> HostResult<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| HostError::io(format!("create {}", dir.display()), e))?;
    }
    std::fs::write(path, text)
        .map_err(|e| HostError::io(format!("write {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| HostError::io(format!("chmod {}", path.display()), e))
}

/// A host port with a listening TCP socket on the host cannot also be published: the DNAT
/// would silently hide the listener.
fn check_host_port_free(port: u32) -> HostResult<()> {
    if listening_tcp_ports()?.contains(&port) {
        return Err(HostError::Invalid(format!(
            "host port {port} is already in use"
        )));
    }
    Ok(())
}

fn listening_tcp_ports() -> HostResult<Vec<u32>> {
    const LISTEN: &str = "0A";
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(HostError::io(format!("read {table}"), e)),
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 3 && fields[3] == LISTEN {
                if let Some(port) = fields[1]
                    .rsplit(':')
                    .next()
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                {
                    ports.push(port);
                }
            }
        }
    }
    Ok(ports)
}
