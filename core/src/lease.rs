//! Leases: holds on a container's grace timer that outlive a request (an attached process
//! connection, a file stream), until the server releases them.

use crate::command::LeaseId;
use crate::handle::Handle;
use std::collections::BTreeMap;

#[derive(Debug)]
pub(crate) struct Leases {
    next: u64,
    /// Lease -> (handle, incarnation): a lease outliving its container must not touch a new
    /// container that took the same handle.
    held: BTreeMap<LeaseId, (Handle, u64)>,
}

impl Leases {
    pub(crate) fn new() -> Leases {
        Leases {
            next: 1,
            held: BTreeMap::new(),
        }
    }

    pub(crate) fn grant(&mut self, handle: &Handle, incarnation: u64) -> LeaseId {
        let lease = LeaseId(self.next);
        self.next += 1;
        self.held.insert(lease, (handle.clone(), incarnation));
        lease
    }

    /// The container (handle and incarnation) the lease held, if it was held.
    pub(crate) fn release(&mut self, lease: LeaseId) -> Option<(Handle, u64)> {
        self.held.remove(&lease)
    }

    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }
}
