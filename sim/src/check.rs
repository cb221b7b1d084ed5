//! The invariants, and the model of what clients were told that they are checked against.
//!
//! The model is built only from replies (and from what the simulated clients sent), never from
//! the core's internals, except where a crash leaves an outcome genuinely unknown; then the
//! model adopts what the core says and marks nothing it cannot know as certain.

use ipnetwork::Ipv4Network;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use trellis_core::api::ContainerSpec;
use trellis_core::limits::{self, EnvOwner, LimitExceeded};
use trellis_core::network::{self, NetworkAssignment, NetworkError, NetworkRequest};
use trellis_core::ports::PortError;
use trellis_core::properties::{self, Properties};
use trellis_core::{Command, Config, Core, CoreView, Error, LeaseId, Reply, Time};
use trellis_fake::FakeOs;

/// Handles no host object can be named after (`handle_is_usable` says why); the core
/// must refuse them.
pub(crate) const BAD_HANDLES: [&str; 9] = [
    ".hidden",
    "tasks",
    "notify_on_release",
    "release_agent",
    "cgroup.procs",
    "memory.limit_in_bytes",
    "pids.max",
    "a/b",
    "..",
];

/// Networks no container may have on any host, and one inside the host network some seeds
/// configure.
pub(crate) const SPECIAL_NETWORKS: [&str; 5] = [
    "127.0.0.1",
    "169.254.3.0/24",
    "224.0.0.0/24",
    "0.0.0.0/8",
    "255.255.255.252/30",
];
pub(crate) const HOST_NETWORK: &str = "192.168.50.0/24";
pub(crate) const IN_HOST_NETWORK: &str = "192.168.50.4/30";

/// The longest handle a Linux host can name everything after, reckoned here independently of
/// the core: the longest name made from a handle, the record's temporary file
/// `.<handle>.json.tmp`, must fit in a file name (255 bytes).
pub(crate) const LONGEST_HANDLE: usize = 255 - ".".len() - ".json.tmp".len();

#[derive(Debug, Default)]
pub struct Model {
    pub containers: BTreeMap<String, ModelContainer>,
    /// Processes clients were told started, by the host's serial: (handle, process id). Kept
    /// until the host has recorded their exit.
    pub processes: BTreeMap<u64, (String, String)>,
    last_id: u64,
}

impl Model {
    pub fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    /// A request was in flight when the server crashed: its effect is now unknown.
    /// `target`: the model container it was aimed at; `paused`: whether the core paused that
    /// container's timer for it.
    pub(crate) fn lost_in_crash(&mut self, command: &Command, target: Option<u64>, paused: bool) {
        let Some(handle) = command.handle() else {
            return;
        };
        let Some(m) = self
            .containers
            .get_mut(handle)
            .filter(|m| Some(m.id) == target)
        else {
            return;
        };
        match command {
            Command::Destroy { .. } => m.destroy_requested = true,
            Command::SetProperty { key, .. } | Command::RemoveProperty { key, .. } if paused => {
                m.uncertain.insert(key.clone());
            }
            Command::SetGraceTime { .. } if paused => m.grace_uncertain = true,
            _ => {}
        }
    }
}

#[derive(Debug)]
pub struct ModelContainer {
    pub id: u64,
    /// User properties as acknowledged.
    pub props: Properties,
    /// Keys with changes in flight: how many, and the last value sent (`None` = removed).
    pub changing: BTreeMap<String, (u32, Option<String>)>,
    /// Keys whose value a crash or a non-durable answer has made unknowable.
    pub uncertain: BTreeSet<String>,
    pub grace: u64,
    pending_grace: (u32, u64),
    pub grace_uncertain: bool,
    /// Requests and leases holding the grace timer, as the clients count them.
    pub pauses: u32,
    pub last_end: Time,
    pub destroy_requested: bool,
    pub expired: bool,
    /// SetGraceTime(0) was answered with nothing holding the container.
    pub expect_expiry_now: bool,
}

impl ModelContainer {
    pub fn new(id: u64, props: Properties, grace: u64, now: Time) -> ModelContainer {
        ModelContainer {
            id,
            props,
            changing: BTreeMap::new(),
            uncertain: BTreeSet::new(),
            grace,
            pending_grace: (0, 0),
            grace_uncertain: false,
            pauses: 0,
            last_end: now,
            destroy_requested: false,
            expired: false,
            expect_expiry_now: false,
        }
    }

    pub fn gone(&self) -> bool {
        self.expired || self.destroy_requested
    }

    /// A command reached a usable container.
    pub fn note_sent(&mut self, command: &Command) {
        match command {
            Command::SetProperty { key, value, .. } if !properties::is_reserved(key) => {
                let entry = self.changing.entry(key.clone()).or_insert((0, None));
                entry.0 += 1;
                entry.1 = Some(value.clone());
            }
            Command::RemoveProperty { key, .. } if !properties::is_reserved(key) => {
                let entry = self.changing.entry(key.clone()).or_insert((0, None));
                entry.0 += 1;
                entry.1 = None;
            }
            Command::SetGraceTime { grace_time, .. } if *grace_time >= 0 => {
                self.pending_grace.0 += 1;
                self.pending_grace.1 = *grace_time as u64;
            }
            Command::Destroy { .. } => self.destroy_requested = true,
            _ => {}
        }
    }

    /// A request that held the timer was answered (its pause already ended).
    pub fn note_answered(&mut self, command: &Command, result: &Result<Reply, Error>, _now: Time) {
        // A refusal changed nothing; the sender takes back what it noted when sending.
        if matches!(result, Err(e) if is_bound_refusal(e)) {
            return;
        }
        let not_durable = matches!(result, Err(Error::NotDurable(_)));
        match command {
            Command::SetProperty { key, .. } | Command::RemoveProperty { key, .. } => {
                let Some(entry) = self.changing.get_mut(key) else {
                    return;
                };
                entry.0 -= 1;
                if entry.0 == 0 {
                    let (_, value) = self.changing.remove(key).expect("present");
                    match value {
                        Some(v) => self.props.insert(key.clone(), v),
                        None => self.props.remove(key),
                    };
                    if not_durable {
                        self.uncertain.insert(key.clone());
                    } else {
                        self.uncertain.remove(key);
                    }
                }
            }
            Command::SetGraceTime { grace_time, .. } if *grace_time >= 0 => {
                self.pending_grace.0 -= 1;
                if self.pending_grace.0 == 0 {
                    self.grace = self.pending_grace.1;
                    self.grace_uncertain = not_durable;
                    if self.grace == 0 && self.pauses == 0 {
                        self.expect_expiry_now = true;
                    }
                }
            }
            _ => {}
        }
    }

    fn known(&self, key: &str) -> Option<Option<&String>> {
        if self.uncertain.contains(key) || self.changing.contains_key(key) {
            None
        } else {
            Some(self.props.get(key))
        }
    }

    fn due(&self, now: Time) -> bool {
        self.pauses == 0
            && (self.expect_expiry_now || (self.grace > 0 && now >= self.last_end.plus(self.grace)))
    }
}

/// The core refusing a request for the handle rule or one of its bounds: such a refusal must
/// come at once and change nothing.
pub fn is_bound_refusal(error: &Error) -> bool {
    matches!(
        error,
        Error::InvalidHandle { .. }
            | Error::LimitExceeded(_)
            | Error::Network(NetworkError::Forbidden { .. })
    )
}

/// Whether a create may use `handle`, by the workload's own reckoning: the bad handles it
/// sends and anything longer than the longest allowed are not (an empty one asks for a
/// generated handle).
fn handle_is_usable(handle: &str) -> bool {
    !BAD_HANDLES.contains(&handle) && handle.len() <= LONGEST_HANDLE
}

fn network_is_forbidden(network: &str, config: &Config) -> bool {
    SPECIAL_NETWORKS.contains(&network)
        || (network == IN_HOST_NETWORK && !config.host_networks.is_empty())
}

fn env_bytes(env: &[String]) -> usize {
    env.iter().map(|e| e.len() + 1).sum()
}

/// The bounds a create breaks on its own, by our own counting, as `LimitExceeded` names them.
fn spec_over_bounds(spec: &ContainerSpec) -> Vec<LimitExceeded> {
    let mut broken = Vec::new();
    for (key, value) in &spec.properties {
        if key.len() > limits::MAX_PROPERTY_KEY_BYTES {
            broken.push(LimitExceeded::PropertyKey { len: key.len() });
        }
        if value.len() > limits::MAX_PROPERTY_VALUE_BYTES {
            broken.push(LimitExceeded::PropertyValue {
                key: key.clone(),
                len: value.len(),
            });
        }
    }
    if spec.properties.len() > limits::MAX_PROPERTIES {
        broken.push(LimitExceeded::PropertyCount);
    }
    if spec.env.len() > limits::MAX_ENV_ENTRIES {
        broken.push(LimitExceeded::EnvEntries {
            whose: EnvOwner::Container,
            count: spec.env.len(),
        });
    }
    if env_bytes(&spec.env) > limits::MAX_ENV_BYTES {
        broken.push(LimitExceeded::EnvBytes {
            whose: EnvOwner::Container,
            bytes: env_bytes(&spec.env),
        });
    }
    if spec.bind_mounts.len() > limits::MAX_BIND_MOUNTS {
        broken.push(LimitExceeded::BindMounts {
            count: spec.bind_mounts.len(),
        });
    }
    if spec.netout_rules.len() > limits::MAX_NETOUT_RULES {
        broken.push(LimitExceeded::NetOutRules {
            count: spec.netout_rules.len(),
        });
    }
    broken
}

/// What is left of the record bound for a container's own data once the rest of its record is
/// in: a generous allowance (handle, spec fields, network, image env, events).
const RECORD_SLACK: usize = 64 * 1024;

fn properties_bytes<'a>(pairs: impl Iterator<Item = (&'a String, &'a String)>) -> usize {
    pairs.map(|(k, v)| k.len() + v.len()).sum()
}

/// The largest a container's properties may be as far as clients know: acknowledged ones and
/// those still changing, each at its larger value.
fn model_properties(m: &ModelContainer) -> (usize, usize) {
    let mut sizes: BTreeMap<&String, usize> = m
        .props
        .iter()
        .map(|(k, v)| (k, k.len() + v.len()))
        .collect();
    for (key, (_, value)) in &m.changing {
        let size = key.len() + value.as_ref().map_or(0, String::len);
        let entry = sizes.entry(key).or_insert(0);
        *entry = (*entry).max(size);
    }
    (sizes.len(), sizes.values().sum())
}

/// Judges every answer against the handle rule and the bounds, from the request alone (and, for
/// bounds that depend on the container, from what clients were told of it): nothing over a
/// bound is accepted, and nothing is refused for a bound it does not come near.
pub fn bounds(
    command: &Command,
    result: &Result<Reply, Error>,
    model: &Model,
    config: &Config,
    core: &Core,
) -> Result<(), String> {
    let refusal = match result {
        Err(e) if is_bound_refusal(e) => Some(e),
        _ => None,
    };
    let near_record_bound = |handle: &str, adding: usize| {
        model.containers.get(handle).is_none_or(|m| {
            model_properties(m).1 + adding + RECORD_SLACK >= limits::MAX_RECORD_BYTES
        })
    };
    let wrong = || {
        Err(format!(
            "{} was refused with '{}', which it does not come near",
            command_name(command),
            refusal.map(ToString::to_string).unwrap_or_default()
        ))
    };
    match (command, result) {
        (Command::Create(spec), Ok(Reply::Created { handle })) => {
            if !handle_is_usable(handle) {
                return Err(format!("create accepted the handle {handle:?}"));
            }
            if let Some(broken) = spec_over_bounds(spec).first() {
                return Err(format!("create accepted over a bound: {broken}"));
            }
            if network_is_forbidden(&spec.network, config) {
                return Err(format!("create accepted the network {}", spec.network));
            }
            Ok(())
        }
        (Command::Create(spec), Err(Error::InvalidHandle { handle, .. })) => {
            if handle_is_usable(handle) || *handle != spec.handle {
                return wrong();
            }
            Ok(())
        }
        (Command::Create(spec), Err(Error::Network(NetworkError::Forbidden { .. }))) => {
            if !network_is_forbidden(&spec.network, config) {
                return wrong();
            }
            Ok(())
        }
        (Command::Create(spec), Err(Error::LimitExceeded(e))) => match e {
            LimitExceeded::RecordSize { bytes } => {
                let own = properties_bytes(spec.properties.iter()) + env_bytes(&spec.env);
                if *bytes <= limits::MAX_RECORD_BYTES
                    || own + RECORD_SLACK < limits::MAX_RECORD_BYTES
                {
                    return wrong();
                }
                Ok(())
            }
            e if spec_over_bounds(spec).contains(e) => Ok(()),
            _ => wrong(),
        },
        (Command::SetProperty { key, value, .. }, Ok(_)) => {
            if limits::check_property(key, value).is_err() {
                return Err(format!(
                    "a property of {} + {} bytes was set",
                    key.len(),
                    value.len()
                ));
            }
            Ok(())
        }
        (Command::SetProperty { handle, key, value }, Err(Error::LimitExceeded(e))) => {
            let plausible = match e {
                LimitExceeded::PropertyKey { len } => {
                    *len == key.len() && *len > limits::MAX_PROPERTY_KEY_BYTES
                }
                LimitExceeded::PropertyValue { len, .. } => {
                    *len == value.len() && *len > limits::MAX_PROPERTY_VALUE_BYTES
                }
                LimitExceeded::PropertyCount => model
                    .containers
                    .get(handle)
                    .is_none_or(|m| model_properties(m).0 >= limits::MAX_PROPERTIES),
                LimitExceeded::RecordSize { bytes } => {
                    *bytes > limits::MAX_RECORD_BYTES
                        && near_record_bound(handle, key.len() + value.len())
                }
                _ => false,
            };
            if !plausible {
                return wrong();
            }
            Ok(())
        }
        (Command::NetOut { handle, rules }, Err(Error::LimitExceeded(e))) => {
            let plausible = match e {
                LimitExceeded::NetOutRules { count } => {
                    let has = core
                        .view()
                        .containers
                        .iter()
                        .find(|c| c.handle == *handle)
                        .map_or(0, |c| c.netout_rules);
                    *count > limits::MAX_NETOUT_RULES && *count >= has + rules.len()
                }
                LimitExceeded::RecordSize { bytes } => {
                    *bytes > limits::MAX_RECORD_BYTES && near_record_bound(handle, 0)
                }
                _ => false,
            };
            if !plausible {
                return wrong();
            }
            Ok(())
        }
        (Command::NetIn { handle, .. }, Err(Error::LimitExceeded(e))) => match e {
            LimitExceeded::RecordSize { bytes }
                if *bytes > limits::MAX_RECORD_BYTES && near_record_bound(handle, 0) =>
            {
                Ok(())
            }
            _ => wrong(),
        },
        (Command::Run { spec, .. }, Ok(_)) => {
            if limits::check_env(EnvOwner::Process, &spec.env).is_err() {
                return Err(format!(
                    "a process with {} env entries ({} bytes) was started",
                    spec.env.len(),
                    env_bytes(&spec.env)
                ));
            }
            Ok(())
        }
        (Command::Run { spec, .. }, Err(Error::LimitExceeded(e))) => {
            let plausible = match e {
                LimitExceeded::EnvEntries {
                    whose: EnvOwner::Process,
                    count,
                } => *count == spec.env.len() && *count > limits::MAX_ENV_ENTRIES,
                LimitExceeded::EnvBytes {
                    whose: EnvOwner::Process,
                    bytes,
                } => *bytes == env_bytes(&spec.env) && *bytes > limits::MAX_ENV_BYTES,
                LimitExceeded::BindMounts { count } => {
                    *count == spec.bind_mounts.len() && *count > limits::MAX_BIND_MOUNTS
                }
                _ => false,
            };
            if !plausible {
                return wrong();
            }
            Ok(())
        }
        (_, Err(_)) if refusal.is_some() => wrong(),
        _ => Ok(()),
    }
}

/// Judges a refusal for want of a container slot, an address or a host port against what the
/// containers the core lists hold, reckoned here without the core's allocators: every container
/// in any state (creating, created, destroying) keeps what it was given until it is gone, a
/// port being mapped (`mapping`, from the effects on their way) is held, and nothing else holds
/// anything. A refusal these holdings do not explain is a leak.
pub fn resource_refusal(
    command: &Command,
    result: &Result<Reply, Error>,
    config: &Config,
    core: &Core,
    mapping: &[u32],
) -> Result<(), String> {
    let Err(error) = result else {
        return Ok(());
    };
    let (network, netin): (Option<&str>, Vec<u32>) = match command {
        Command::Create(spec) => (
            Some(&spec.network),
            spec.netin.iter().map(|n| n.host_port).collect(),
        ),
        Command::NetIn { host_port, .. } => (None, vec![*host_port]),
        _ => return Ok(()),
    };
    let judged = matches!(
        error,
        Error::MaxContainersReached | Error::Network(_) | Error::Port(_)
    );
    if !judged {
        return Ok(());
    }
    let view = core.view();
    let addresses: Vec<NetworkAssignment> =
        view.containers.iter().filter_map(|c| c.network).collect();
    let ports: BTreeSet<u32> = view
        .containers
        .iter()
        .flat_map(|c| {
            c.mapped_ports
                .iter()
                .map(|m| m.host_port)
                .chain(c.held_ports.iter().copied())
        })
        .chain(mapping.iter().copied())
        .collect();
    let subnet_in_use = |subnet: Ipv4Network| addresses.iter().any(|a| a.subnet == subnet);
    let ip_in_use = |subnet: Ipv4Network, ip: Ipv4Addr| {
        addresses
            .iter()
            .any(|a| a.subnet == subnet && a.container_ip == ip)
    };
    let requested = network.map(network::parse);
    let explained = match (error, requested) {
        (Error::MaxContainersReached, _) => {
            let pool_subnets = pool_subnets(config.network_pool).count() as u64;
            let max = match config.max_containers {
                0 => pool_subnets,
                n => n.min(pool_subnets),
            };
            view.containers.len() as u64 >= max
        }
        (Error::Network(NetworkError::PoolExhausted { .. }), Some(Ok(NetworkRequest::Pool))) => {
            pool_subnets(config.network_pool).all(subnet_in_use)
        }
        (
            Error::Network(NetworkError::IpTaken { ip }),
            Some(Ok(NetworkRequest::Exact { subnet, ip: asked })),
        ) => *ip == asked && ip_in_use(subnet, asked),
        (
            Error::Network(NetworkError::SubnetFull { subnet }),
            Some(Ok(NetworkRequest::AnyIpIn(asked))),
        ) => {
            *subnet == asked
                && (u32::from(asked.network()) + 1..u32::from(asked.broadcast()) - 1)
                    .all(|ip| ip_in_use(asked, Ipv4Addr::from(ip)))
        }
        (
            Error::Network(NetworkError::OverlapsSubnet { subnet, existing }),
            Some(Ok(NetworkRequest::AnyIpIn(asked) | NetworkRequest::Exact { subnet: asked, .. })),
        ) => {
            *subnet == asked
                && existing != subnet
                && overlap(asked, *existing)
                && subnet_in_use(*existing)
        }
        (
            Error::Network(NetworkError::OverlapsPool { subnet, .. }),
            Some(Ok(NetworkRequest::AnyIpIn(asked) | NetworkRequest::Exact { subnet: asked, .. })),
        ) => *subnet == asked && overlap(asked, config.network_pool),
        // Refusals of the request itself (unparseable, forbidden) are judged elsewhere.
        (Error::Network(_), _) => return Ok(()),
        (Error::Port(PortError::InUse { port }), _) => {
            // Held by a container, or asked for (or possibly handed out) earlier in the same
            // request.
            let earlier = netin.iter().filter(|p| **p == *port).count() > 1
                || (netin.contains(&0) && pool_ports(config).contains(port));
            ports.contains(port) || earlier
        }
        (Error::Port(PortError::PoolExhausted { .. }), _) => {
            let free = pool_ports(config).filter(|p| !ports.contains(p)).count();
            // The request's own earlier mappings may have taken the rest.
            free < netin.len()
        }
        (Error::Port(_), _) => return Ok(()),
        _ => false,
    };
    if explained {
        return Ok(());
    }
    Err(format!(
        "{} was refused with '{error}', but the containers hold addresses {addresses:?} and \
         ports {ports:?}",
        command_name(command)
    ))
}

fn overlap(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The /30 subnets the pool is carved into.
fn pool_subnets(pool: Ipv4Network) -> impl Iterator<Item = Ipv4Network> {
    let base = u32::from(pool.network());
    let count = 1u32 << (32 - u32::from(pool.prefix())) >> 2;
    (0..count).map(move |i| {
        Ipv4Network::new(Ipv4Addr::from(base + 4 * i), 30).expect("a /30 is a valid network")
    })
}

fn pool_ports(config: &Config) -> std::ops::Range<u32> {
    config.port_pool_start..config.port_pool_start + config.port_pool_size
}

fn command_name(command: &Command) -> String {
    let debug = format!("{command:?}");
    let name = debug.split([' ', '(', '{']).next().unwrap_or_default();
    match command.handle() {
        Some(handle) => format!("{name} on {}", trellis_core::handle::shown(handle)),
        None => name.to_string(),
    }
}

/// Which commands hold a container's grace timer while they run (when it exists and is usable).
pub fn pauses_timer(command: &Command) -> bool {
    !matches!(
        command,
        Command::Create(_)
            | Command::Destroy { .. }
            | Command::List { .. }
            | Command::BulkInfo { .. }
            | Command::BulkMetrics { .. }
            | Command::Release { .. }
            | Command::Capacity
    )
}

/// Expiry happens exactly when due: never while held or before the grace time has passed since
/// the last request ended, and never later than the first moment after that.
pub fn grace(model: &mut Model, core: &Core, now: Time) -> Result<u64, String> {
    let mut expired = 0;
    for (handle, m) in model.containers.iter_mut().filter(|(_, m)| !m.gone()) {
        let usable = core.container_state(handle) == Some(properties::STATE_CREATED);
        if !usable {
            if !m.due(now) {
                return Err(format!(
                    "{handle} expired at {} although not due (pauses {}, grace {}ns, last request ended at {})",
                    now.0, m.pauses, m.grace, m.last_end.0
                ));
            }
            m.expired = true;
            expired += 1;
        } else if m.due(now) && !m.grace_uncertain {
            return Err(format!(
                "{handle} should have expired by {} (grace {}ns, last request ended at {}) but is still there",
                now.0, m.grace, m.last_end.0
            ));
        }
        m.expect_expiry_now = false;
    }
    model
        .containers
        .retain(|handle, m| !(m.gone() && core.container_state(handle).is_none()));
    Ok(expired)
}

/// No address is held twice, and the allocator holds exactly the addresses of live containers.
pub fn allocations(view: &CoreView) -> Result<(), String> {
    let mut held: Vec<NetworkAssignment> =
        view.containers.iter().filter_map(|c| c.network).collect();
    held.sort_by_key(|a| (a.subnet, a.container_ip));
    if let Some(pair) = held
        .windows(2)
        .find(|w| w[0].container_ip == w[1].container_ip)
    {
        return Err(format!("two live containers hold {}", pair[0].container_ip));
    }
    let mut allocated = view.allocations.clone();
    allocated.sort_by_key(|a| (a.subnet, a.container_ip));
    if held != allocated {
        let leaked: Vec<_> = allocated.iter().filter(|a| !held.contains(a)).collect();
        let missing: Vec<_> = held.iter().filter(|a| !allocated.contains(a)).collect();
        return Err(format!("allocator disagrees with containers: held for no container {leaked:?}, unaccounted {missing:?}"));
    }
    Ok(())
}

/// Nothing exists on the host that the core does not know, and the host saw no effect it could
/// not have carried out.
pub fn host(os: &FakeOs, core: &Core) -> Result<(), String> {
    if let Some(v) = os.violations.first() {
        return Err(format!("host received an impossible effect: {v}"));
    }
    // A pea's root filesystem and cgroup last as long as its process is kept: while it runs
    // and until its exit is released (or its container's init dies, and they go with the
    // container's).
    for (handle, c) in &os.containers {
        let outlived = c
            .peas
            .iter()
            .find(|p| c.init && !c.processes.contains_key(*p) && !c.exited.contains(*p));
        if let Some(pea) = outlived {
            return Err(format!("{handle}: pea {pea} outlived its process"));
        }
    }
    for handle in os.containers.keys().chain(os.records.keys()) {
        if core.container_state(handle).is_none() {
            return Err(format!(
                "host holds {handle} ({:?}), which the core does not know",
                os.containers.get(handle)
            ));
        }
    }
    Ok(())
}

/// The core's pause count agrees with what clients hold.
pub fn pauses(model: &Model, view: &CoreView) -> Result<(), String> {
    for c in view
        .containers
        .iter()
        .filter(|c| c.state == properties::STATE_CREATED)
    {
        if let Some(m) = model.containers.get(&c.handle).filter(|m| !m.gone()) {
            if m.pauses != c.pauses {
                return Err(format!(
                    "{} is held by {} requests/leases but the core counts {}",
                    c.handle, m.pauses, c.pauses
                ));
            }
        }
    }
    Ok(())
}

/// List returns every container that certainly matches and none that certainly does not.
pub fn list(
    model: &Model,
    core: &Core,
    filter: &Properties,
    handles: &[String],
) -> Result<(), String> {
    let listed: BTreeSet<&String> = handles.iter().collect();
    if listed.len() != handles.len() {
        return Err(format!("List returned a handle twice: {handles:?}"));
    }
    let state_filter = filter.get(properties::STATE).map(String::as_str);
    for handle in &listed {
        let known = model.containers.get(*handle).is_some_and(|m| !m.gone());
        let state = core.container_state(handle);
        if state_filter != Some(properties::STATE_ALL) && state != Some(properties::STATE_CREATED) {
            return Err(format!(
                "List showed {handle} in state {state:?} under filter {filter:?}"
            ));
        }
        if !known && state == Some(properties::STATE_CREATED) {
            return Err(format!(
                "List showed {handle}, which no client was told exists"
            ));
        }
    }
    for (handle, m) in model.containers.iter().filter(|(_, m)| !m.gone()) {
        let state_ok = matches!(
            state_filter,
            None | Some(properties::STATE_ALL) | Some(properties::STATE_CREATED)
        );
        let mut verdict = Some(state_ok);
        for (key, wanted) in filter
            .iter()
            .filter(|(k, _)| k.as_str() != properties::STATE)
        {
            match m.known(key) {
                None => verdict = verdict.filter(|v| !v),
                Some(actual) => {
                    if !actual.map_or(wanted.is_empty(), |a| a == wanted) {
                        verdict = Some(false);
                    }
                }
            }
        }
        match verdict {
            Some(true) if !listed.contains(handle) => {
                return Err(format!(
                    "List under {filter:?} left out {handle} (properties {:?})",
                    m.props
                ))
            }
            Some(false) if listed.contains(handle) => {
                return Err(format!(
                    "List under {filter:?} included {handle} (properties {:?})",
                    m.props
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

pub fn property(
    model: &Model,
    handle: &str,
    key: &str,
    result: &Result<Reply, Error>,
) -> Result<(), String> {
    let Some(m) = model.containers.get(handle).filter(|m| !m.gone()) else {
        return Ok(());
    };
    if properties::is_reserved(key) {
        return Ok(());
    }
    let Some(expected) = m.known(key) else {
        return Ok(());
    };
    match (expected, result) {
        (Some(v), Ok(Reply::Property(got))) if got == v => Ok(()),
        (None, Err(Error::PropertyNotFound { .. })) => Ok(()),
        (_, Err(Error::ContainerNotFound { .. })) => Ok(()),
        (expected, got) => Err(format!(
            "Property {key} of {handle}: expected {expected:?}, got {got:?}"
        )),
    }
}

/// After a restart every acknowledged container is back with its acknowledged properties.
pub fn after_restart(model: &mut Model, core: &Core, now: Time) -> Result<(), String> {
    let view = core.view();
    let by_handle: BTreeMap<&str, &trellis_core::ContainerView> = view
        .containers
        .iter()
        .map(|c| (c.handle.as_str(), c))
        .collect();
    let mut dropped = Vec::new();
    for (handle, m) in model.containers.iter_mut() {
        m.pauses = 0;
        m.last_end = now;
        m.expect_expiry_now = false;
        let alive = by_handle
            .get(handle.as_str())
            .filter(|c| c.state == properties::STATE_CREATED);
        let Some(c) = alive else {
            if m.gone() {
                dropped.push(handle.clone());
                continue;
            }
            return Err(format!(
                "{handle} was acknowledged but did not survive the restart"
            ));
        };
        if m.gone() {
            // Its destroy was lost in the crash; the container lives on.
            m.destroy_requested = false;
            m.expired = false;
        }
        for key in m
            .props
            .keys()
            .chain(c.properties.keys())
            .collect::<BTreeSet<_>>()
        {
            if m.uncertain.contains(key) || m.changing.contains_key(key) {
                continue;
            }
            if m.props.get(key) != c.properties.get(key) {
                return Err(format!(
                    "property {key} of {handle} was acknowledged as {:?} but came back as {:?}",
                    m.props.get(key),
                    c.properties.get(key)
                ));
            }
        }
        m.props = c.properties.clone();
        m.uncertain.clear();
        m.changing.clear();
        m.pending_grace = (0, 0);
        if m.grace_uncertain {
            m.grace = c.grace_time;
            m.grace_uncertain = false;
        } else if m.grace != c.grace_time {
            return Err(format!(
                "grace time of {handle} was acknowledged as {} but came back as {}",
                m.grace, c.grace_time
            ));
        }
    }
    for handle in dropped {
        model.containers.remove(&handle);
    }
    // Creates in flight at the crash may have finished: adopt what the core has.
    for c in view
        .containers
        .iter()
        .filter(|c| c.state == properties::STATE_CREATED)
    {
        if !model.containers.contains_key(&c.handle) {
            let id = model.next_id();
            model.containers.insert(
                c.handle.clone(),
                ModelContainer::new(id, c.properties.clone(), c.grace_time, now),
            );
        }
    }
    Ok(())
}

/// The core lists exactly the processes the host runs in each container (once reconciled),
/// but for those in motion: a spawn on its way to the host or back, an exit on its way to the
/// core. A running process the core does not list would have its id handed out twice; one it
/// lists that neither runs nor moves holds its id (and Info shows it) forever.
pub fn processes(
    view: &CoreView,
    os: &FakeOs,
    in_motion: &BTreeSet<(&str, &str)>,
) -> Result<(), String> {
    for c in &view.containers {
        let running = os.containers.get(&c.handle).map(|h| &h.processes);
        if let Some(p) = running
            .into_iter()
            .flat_map(|r| r.keys())
            .find(|p| !c.processes.contains(p))
        {
            return Err(format!(
                "the host runs process {p} in {} but the core does not list it (it lists {:?})",
                c.handle, c.processes
            ));
        }
        if let Some(p) = c.processes.iter().find(|p| {
            !running.is_some_and(|r| r.contains_key(*p))
                && !in_motion.contains(&(c.handle.as_str(), p.as_str()))
        }) {
            return Err(format!(
                "the core lists process {p} in {}, which does not run, is not starting and has \
                 no exit on its way",
                c.handle
            ));
        }
    }
    Ok(())
}

/// Every process clients were told started either runs on the host or has its exit recorded:
/// none vanishes (across crashes too). Those with an exit recorded are accounted for and
/// dropped from the model.
pub fn processes_accounted(model: &mut Model, os: &FakeOs) -> Result<(), String> {
    let mut ended = Vec::new();
    for (serial, (handle, process_id)) in &model.processes {
        if os.running(handle, process_id) == Some(*serial) {
            continue;
        }
        if !os.exits.contains(serial) {
            return Err(format!(
                "process {process_id} of {handle} (serial {serial}) was started and acknowledged \
                 but neither runs nor has an exit recorded"
            ));
        }
        ended.push(*serial);
    }
    for serial in ended {
        model.processes.remove(&serial);
    }
    Ok(())
}

/// A lease not being released: the lease, its container, and the process it is held for (by id
/// and serial), if any.
pub type OpenLease<'a> = (LeaseId, &'a str, Option<(&'a str, u64)>);

/// The core holds exactly the leases clients hold, and no process connection's lease outlives
/// its process: once the exit reached the core the connection ends (`open` are the leases not
/// being released: lease, handle, and the process by id and serial).
pub fn leases(
    view: &CoreView,
    held: usize,
    open: &[OpenLease<'_>],
    os: &FakeOs,
    in_motion: &BTreeSet<(&str, &str)>,
) -> Result<(), String> {
    if view.leases != held {
        return Err(format!(
            "the core holds {} leases but clients hold {held}",
            view.leases
        ));
    }
    for (lease, handle, process) in open {
        let Some((process_id, serial)) = process else {
            continue;
        };
        let runs = os.running(handle, process_id) == Some(*serial);
        let exit_on_its_way = in_motion.contains(&(*handle, *process_id));
        if !runs && !exit_on_its_way {
            return Err(format!(
                "{lease:?} on {handle} is held for process {process_id}, whose exit the core has \
                 had"
            ));
        }
    }
    Ok(())
}

/// Once nothing is in flight: every request answered, nothing stuck half-way, and the host
/// holds exactly the live containers, complete.
pub fn at_rest(core: &Core, os: &FakeOs, unanswered: usize) -> Result<(), String> {
    if unanswered > 0 {
        return Err(format!("{unanswered} requests were never answered"));
    }
    let view = core.view();
    if view.leases > 0 {
        return Err(format!(
            "{} leases are held after every client hung up",
            view.leases
        ));
    }
    if view.effects_in_flight > 0 {
        return Err(format!(
            "{} effects still in flight at rest",
            view.effects_in_flight
        ));
    }
    allocations(&view)?;
    host(os, core)?;
    let mut mapped = BTreeSet::new();
    for c in &view.containers {
        if c.state != properties::STATE_CREATED {
            return Err(format!("{} is stuck in state {}", c.handle, c.state));
        }
        let Some(on_host) = os.containers.get(&c.handle) else {
            return Err(format!(
                "{} is live but the host has nothing for it",
                c.handle
            ));
        };
        if !(on_host.rootfs && on_host.cgroup && on_host.network.is_some() && on_host.init) {
            return Err(format!(
                "{} is live but incomplete on the host: {on_host:?}",
                c.handle
            ));
        }
        if !os.records.contains_key(&c.handle) {
            return Err(format!("{} is live but has no record", c.handle));
        }
        let running: Vec<String> = on_host.processes.keys().cloned().collect();
        if running != c.processes {
            return Err(format!(
                "{}: the host runs {running:?} but the core lists {:?}",
                c.handle, c.processes
            ));
        }
        mapped.extend(c.mapped_ports.iter().map(|m| m.host_port));
        mapped.extend(c.held_ports.iter().copied());
    }
    let taken: BTreeSet<u32> = view.ports_taken.iter().copied().collect();
    if taken != mapped {
        return Err(format!(
            "ports held {taken:?} differ from ports mapped {mapped:?}"
        ));
    }
    Ok(())
}
