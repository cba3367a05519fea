//! Old-interface handling of a cold start: every pre-existing `Ethernet*` netdev is set
//! admin-down. The C++ daemon forks `ip link set <p> down` per port (~10 ms each); we send all
//! requests in one netlink write and collect the acknowledgements.

use std::collections::HashMap;
use std::time::Duration;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::link::{LinkFlags, LinkHeader, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use super::parse::{for_each_message, Message};
use super::socket::{NlSocket, SocketError, RECV_BUF};

/// Bringing interfaces down failed as a whole (individual refusals are only reported).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Socket set-up failed.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Sending or receiving failed.
    #[error("admin-down request I/O failed")]
    Io(#[source] std::io::Error),
}

/// Per-interface outcome: `Ok` or the kernel's errno.
pub type AdminOutcome = HashMap<u32, Result<(), i32>>;

/// Requests in flight at once: their acknowledgements must fit the socket's receive buffer.
const WINDOW: usize = 128;

/// Clears `IFF_UP` on every ifindex in `ifindexes`; returns the per-interface outcome.
/// Interfaces whose acknowledgement did not come within `timeout` are reported as `ETIMEDOUT`.
pub async fn set_down(ifindexes: &[u32], timeout: Duration) -> Result<AdminOutcome, AdminError> {
    let mut outcome = AdminOutcome::new();
    if ifindexes.is_empty() {
        return Ok(outcome);
    }
    let sock = NlSocket::open()?;
    // Acknowledgements without the echoed request: smaller, so a window of them fits.
    sock.set_cap_ack().map_err(AdminError::Io)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seq: u32 = 0;
    for window in ifindexes.chunks(WINDOW) {
        // Several requests per write: rtnetlink processes every message of one sendmsg in order.
        let mut seq_to_ifindex = HashMap::with_capacity(window.len());
        let mut buf = Vec::new();
        for &ifindex in window {
            seq += 1;
            seq_to_ifindex.insert(seq, ifindex);
            append_set_down(&mut buf, ifindex, seq);
        }
        sock.send(&buf).await.map_err(AdminError::Io)?;
        let mut acked = 0;
        let collect = async {
            let mut rbuf = Vec::with_capacity(RECV_BUF);
            while acked < window.len() {
                sock.recv(&mut rbuf).await.map_err(AdminError::Io)?;
                for_each_message(&rbuf, 0, 0, |h, m| {
                    if let (Message::Error(code), Some(&ifindex)) = (m, seq_to_ifindex.get(&h.seq)) {
                        outcome.insert(ifindex, if code == 0 { Ok(()) } else { Err(-code) });
                        acked += 1;
                    }
                });
            }
            Ok::<_, AdminError>(())
        };
        match tokio::time::timeout_at(deadline, collect).await {
            Ok(res) => res?,
            // Missing acknowledgements are reported as ETIMEDOUT below.
            Err(_) => break,
        }
    }
    for &ifindex in ifindexes {
        outcome.entry(ifindex).or_insert(Err(libc::ETIMEDOUT));
    }
    Ok(outcome)
}

fn append_set_down(buf: &mut Vec<u8>, ifindex: u32, seq: u32) {
    let mut link = LinkMessage::default();
    link.header =
        LinkHeader { index: ifindex, flags: LinkFlags::empty(), change_mask: LinkFlags::Up, ..LinkHeader::default() };
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_ACK;
    hdr.sequence_number = seq;
    let mut msg = NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(RouteNetlinkMessage::SetLink(link)));
    msg.finalize();
    let mut encoded = vec![0; msg.buffer_len()];
    msg.serialize(&mut encoded);
    buf.extend_from_slice(&encoded);
}
