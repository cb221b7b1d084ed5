//! Gratuitous ARP announcements from a container's interface, so that containers sharing its
//! subnet replace what they remember of a reused address (the new container has a new MAC).
//! The kernel's own announcement on link up (`arp_notify`) goes out before the veth's queue
//! and its bridge port are active and is silently dropped, and nothing tells us when both are
//! (the kernel activates them later, under a lock other link changes contend for); so the
//! announcement is repeated over the first three seconds, by the networker's deferred-work
//! threads (see `deferred`). Teardown
//! stops it: an announcement of a destroyed container's MAC would send its neighbours back to
//! the old link while the address goes to a new container.

use super::deferred::DeferredWork;
use crate::host::{HostError, HostResult};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];
/// When each announcement goes out, after the previous one.
const SCHEDULE: [Duration; 6] = [
    Duration::ZERO,
    Duration::from_millis(10),
    Duration::from_millis(40),
    Duration::from_millis(200),
    Duration::from_millis(750),
    Duration::from_millis(2000),
];

/// The frame: an ARP request for our own address from our own address (RFC 5227's
/// announcement), broadcast.
pub fn announcement_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut frame = [0u8; 42];
    frame[0..6].copy_from_slice(&BROADCAST);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet hardware, IPv4 protocol, address lengths 6 and 4, request.
    frame[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&ip.octets());
    // Target hardware address stays zero.
    frame[38..42].copy_from_slice(&ip.octets());
    frame
}

/// A packet socket on one link, bound to the network namespace it was opened in.
pub struct Announcer {
    socket: OwnedFd,
    index: u32,
    frame: [u8; 42],
}

impl Announcer {
    /// Opens the socket for the link `index` of the calling thread's network namespace.
    pub fn open(index: u32, mac: [u8; 6], ip: Ipv4Addr) -> HostResult<Announcer> {
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ARP.to_be()),
            )
        };
        if raw < 0 {
            return Err(HostError::io(
                "open a packet socket",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Announcer {
            // SAFETY: `raw` is a fresh descriptor that nothing else owns.
            socket: unsafe { OwnedFd::from_raw_fd(raw) },
            index,
            frame: announcement_frame(mac, ip),
        })
    }

    fn send(&self) -> std::io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = ETH_P_ARP.to_be();
        address.sll_ifindex = self.index as i32;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&BROADCAST);
        // SAFETY: the buffer and address outlive the call; the lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                self.frame.as_ptr().cast(),
                self.frame.len(),
                0,
                std::ptr::addr_of!(address).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Queues the announcements on `work`, on the schedule; setup does not wait. Each is
    /// skipped once `stop` is set. A failed send only means the neighbours learn the new MAC
    /// when their entries expire.
    pub fn announce_later(self, work: &DeferredWork, stop: Arc<AtomicBool>) {
        let announcer = Arc::new(self);
        let mut at = Instant::now();
        for delay in SCHEDULE {
            at += delay;
            let (announcer, stop) = (announcer.clone(), stop.clone());
            work.schedule(at, move || {
                if !stop.load(Ordering::Relaxed) {
                    let _ = announcer.send();
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_asks_for_its_own_address_from_itself() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let frame = announcement_frame(mac, Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(&frame[0..6], &[0xff; 6]);
        assert_eq!(&frame[6..12], &mac);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[20..22], &[0, 1], "a request");
        assert_eq!(&frame[22..28], &mac, "sender MAC");
        assert_eq!(&frame[28..32], &[10, 1, 2, 3], "sender address");
        assert_eq!(&frame[32..38], &[0; 6], "target MAC unknown");
        assert_eq!(&frame[38..42], &[10, 1, 2, 3], "target address is our own");
    }
}
