//! Where a container is in its life: being created (which steps are done), in use, or being
//! torn down (which steps are left).

use crate::command::RequestId;
use crate::error::Error;
use crate::properties;
use std::collections::{BTreeSet, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum CreateStep {
    PrepareRootfs,
    CreateCgroup,
    SetupNetwork,
    StartInit,
    ConnectNetwork,
    Persist,
}

impl CreateStep {
    pub(crate) const ORDER: [CreateStep; 6] = [
        CreateStep::PrepareRootfs,
        CreateStep::CreateCgroup,
        CreateStep::SetupNetwork,
        CreateStep::StartInit,
        CreateStep::ConnectNetwork,
        CreateStep::Persist,
    ];

    /// The step after this one; `ConnectNetwork` is a step only with a network plugin.
    pub(crate) fn next(self, network_plugin: bool) -> Option<CreateStep> {
        let at = Self::ORDER
            .iter()
            .position(|s| *s == self)
            .expect("step is in ORDER");
        Self::ORDER[at + 1..]
            .iter()
            .copied()
            .find(|s| network_plugin || *s != CreateStep::ConnectNetwork)
    }

    /// The teardown step that undoes this one.
    pub(crate) fn undo(self) -> TeardownStep {
        match self {
            CreateStep::PrepareRootfs => TeardownStep::RemoveRootfs,
            CreateStep::CreateCgroup => TeardownStep::RemoveCgroup,
            CreateStep::SetupNetwork => TeardownStep::TeardownNetwork,
            CreateStep::StartInit => TeardownStep::KillContainer,
            CreateStep::ConnectNetwork => TeardownStep::TeardownNetwork,
            CreateStep::Persist => TeardownStep::DeleteRecord,
        }
    }
}

/// Teardown runs in this order whatever started it (destroy, a create's rollback, expiry,
/// reconciliation): processes first, then what they used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TeardownStep {
    KillContainer,
    TeardownNetwork,
    RemoveCgroup,
    RemoveRootfs,
    DeleteRecord,
}

impl TeardownStep {
    pub(crate) const ALL: [TeardownStep; 5] = [
        TeardownStep::KillContainer,
        TeardownStep::TeardownNetwork,
        TeardownStep::RemoveCgroup,
        TeardownStep::RemoveRootfs,
        TeardownStep::DeleteRecord,
    ];

    /// The given steps in teardown order, without repeats.
    pub(crate) fn ordered(steps: impl IntoIterator<Item = TeardownStep>) -> VecDeque<TeardownStep> {
        let set: BTreeSet<TeardownStep> = steps.into_iter().collect();
        set.into_iter().collect()
    }
}

#[derive(Debug)]
pub(crate) struct Teardown {
    /// Destroy requests waiting for the end.
    pub requesters: Vec<RequestId>,
    pub steps: VecDeque<TeardownStep>,
    pub running: bool,
    pub attempts: u32,
    /// Set when this teardown rolls back a create: that request fails with this cause.
    pub rollback_of: Option<(RequestId, Error)>,
}

#[derive(Debug)]
pub(crate) enum Phase {
    Creating {
        request: RequestId,
        done: Vec<CreateStep>,
    },
    Active,
    Stopped,
    Destroying(Teardown),
}

impl Phase {
    /// `garden.state` as List filters see it.
    pub(crate) fn garden_state(&self) -> &'static str {
        match self {
            Phase::Creating { .. } => "creating",
            Phase::Active | Phase::Stopped => properties::STATE_CREATED,
            Phase::Destroying(_) => "destroying",
        }
    }

    pub(crate) fn is_usable(&self) -> bool {
        matches!(self, Phase::Active | Phase::Stopped)
    }
}
