//! Bandwidth limits with tc on the host end of the container's veth.
//!
//! Traffic to the container leaves the host through the host veth: a token bucket (tbf) there
//! shapes it. Traffic from the container arrives on the host veth: its ingress is redirected
//! (mirred) to an ifb device of the container's own, whose tbf shapes it. This kernel has no
//! ingress policer action, and shaping through an ifb queues instead of dropping, which TCP
//! takes better anyway.
//!
//! rtnetlink has no builders for tbf or mirred, so this drives the `tc` command (iproute2), in
//! one `tc -batch` run.

use crate::host::HostResult;
use trellis_core::api::BandwidthLimits;

/// Queueing delay a tbf may add before it drops; generous enough that a burst of a few MTUs
/// is shaped rather than dropped at low rates.
const LATENCY: &str = "100ms";

/// The tc batch that limits both directions to `limits` (rate and burst in bytes/s, bytes).
/// tbf needs a bucket of at least one packet; a smaller burst is raised to the MTU plus the
/// Ethernet header.
pub fn tc_batch(host_veth: &str, ifb: &str, limits: &BandwidthLimits, mtu: u32) -> String {
    let burst = limits.burst.max(u64::from(mtu) + 14);
    let rate = limits.rate;
    format!(
        "qdisc replace dev {host_veth} root tbf rate {rate}bps burst {burst} latency {LATENCY}\n\
         qdisc replace dev {ifb} root tbf rate {rate}bps burst {burst} latency {LATENCY}\n\
         qdisc replace dev {host_veth} handle ffff: ingress\n\
         filter replace dev {host_veth} parent ffff: protocol all prio 1 handle 800::1 u32 match u32 0 0 action mirred egress redirect dev {ifb}\n"
    )
}

pub fn run_tc_batch(batch: &str) -> HostResult<()> {
    crate::linux::command::run_script("limit bandwidth", "tc", &["-batch", "-"], batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_are_shaped() {
        let batch = tc_batch(
            "trv0000000000-0",
            "trv0000000000-i",
            &BandwidthLimits {
                rate: 100_000,
                burst: 10,
            },
            1500,
        );
        assert!(batch.contains("dev trv0000000000-0 root tbf rate 100000bps burst 1514 "));
        assert!(batch.contains("dev trv0000000000-i root tbf rate 100000bps burst 1514 "));
        assert!(batch.contains("redirect dev trv0000000000-i"));
    }
}
