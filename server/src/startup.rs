//! What a server does with the containers it finds at start when told to destroy them
//! (`--destroy-containers-on-startup`, as gdn).

use std::collections::BTreeMap;
use tracing::{info, warn};
use trellis_core::effect::EffectKind;
use trellis_core::network::NetworkAssignment;
use trellis_os::{Host, HostError};

/// How many containers are destroyed at once (each teardown waits on the host: an init to
/// die, a cgroup to empty, mounts to go).
const DESTROY_WORKERS: usize = 16;

/// What [`destroy_all_containers`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Destroyed {
    pub destroyed: usize,
    /// Containers a step of whose teardown failed: their records are gone all the same, so
    /// the core finds what is left as leftovers and tears it down (with retries) once it runs.
    pub unfinished: usize,
}

/// Destroys every container the host has a record or anything else of, before the core is
/// built: the same teardown steps, in the same order, as a destroy through the API.
pub fn destroy_all_containers(host: &dyn Host) -> Result<Destroyed, HostError> {
    let mut containers: BTreeMap<String, Option<NetworkAssignment>> = host
        .load_records()?
        .into_iter()
        .map(|record| (record.handle, Some(record.network)))
        .collect();
    for (handle, observed) in host.observe()?.containers {
        let entry = containers.entry(handle).or_insert(None);
        if entry.is_none() {
            *entry = observed.network;
        }
    }
    let containers: Vec<(String, Option<NetworkAssignment>)> = containers.into_iter().collect();
    let finished =
        trellis_os::linux::parallel::map(&containers, DESTROY_WORKERS, |(handle, network)| {
            destroy(host, handle, network.as_ref())
        });
    let unfinished = finished.iter().filter(|done| !**done).count();
    let outcome = Destroyed {
        destroyed: containers.len() - unfinished,
        unfinished,
    };
    info!(
        destroyed = outcome.destroyed,
        unfinished = outcome.unfinished,
        "destroyed the containers found at start (--destroy-containers-on-startup)"
    );
    Ok(outcome)
}

/// Tears one container down; `false` if a step failed (logged).
fn destroy(host: &dyn Host, handle: &str, network: Option<&NetworkAssignment>) -> bool {
    let handle_of = || handle.to_string();
    let steps = [
        (
            "killing its processes",
            EffectKind::KillContainer {
                handle: handle_of(),
            },
        ),
        (
            "tearing down its network",
            EffectKind::TeardownNetwork {
                handle: handle_of(),
                assignment: network.copied(),
            },
        ),
        (
            "removing its cgroup",
            EffectKind::RemoveCgroup {
                handle: handle_of(),
            },
        ),
        (
            "removing its root filesystem",
            EffectKind::RemoveRootfs {
                handle: handle_of(),
            },
        ),
    ];
    let mut finished = true;
    for (what, step) in &steps {
        if let Err(error) = host.execute(step) {
            warn!(handle, %error, "destroying a container found at start: {what}");
            finished = false;
            // Later steps depend on earlier ones (a cgroup with processes cannot go).
            break;
        }
    }
    // Without its record the container is never served again; what is left of it the core
    // tears down as a leftover.
    if let Err(error) = host.execute(&EffectKind::DeleteRecord {
        handle: handle_of(),
    }) {
        warn!(handle, %error, "destroying a container found at start: deleting its record");
        finished = false;
    }
    finished
}
