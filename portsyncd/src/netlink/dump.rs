//! The `RTM_GETLINK` dump on its own socket. Its end - `NLMSG_DONE` carrying our request's
//! sequence number and our port id - is the end of the initial update (EOIU). A dump flagged
//! `NLM_F_DUMP_INTR` is repeated (bounded); a dump that does not end in time returns what it has.

use std::time::{Duration, Instant};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::RouteNetlinkMessage;
use portsyncd_common::{origin, PortEvent};

use super::parse::{for_each_message, Message};
use super::socket::{grown_capacity, is_truncated, NlSocket, SocketError, RECV_BUF};
use crate::clock::monotonic_ns;

/// The dump could not be run.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Socket set-up failed.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// Sending the request or receiving replies failed.
    #[error("link dump I/O failed")]
    Io(#[source] std::io::Error),
    /// The kernel answered the request with an error.
    #[error("kernel refused the link dump (errno {0})")]
    Refused(i32),
}

/// How a dump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DumpEnd {
    /// `NLMSG_DONE` arrived: the EOIU.
    Done,
    /// No `NLMSG_DONE` within the deadline; the entries received so far are returned.
    Timeout,
}

/// Options of one dump.
#[derive(Debug, Clone, Copy)]
pub struct DumpOptions {
    /// Deadline for the whole dump, retries included.
    pub timeout: Duration,
    /// How often an interrupted dump is repeated before its result is used anyway.
    pub max_retries: u32,
    /// Test hook: ignore `NLMSG_DONE`, so that the timeout path runs.
    pub hold_done: bool,
    /// Test hook: every attempt counts as interrupted, so the result is inconsistent.
    pub force_intr: bool,
}

/// The result of a dump.
#[derive(Debug, Clone)]
pub struct Dump {
    /// Every link, as `RTM_NEWLINK` events with origin [`origin::DUMP`].
    pub links: Vec<PortEvent>,
    /// How the dump ended.
    pub end: DumpEnd,
    /// Interrupted dumps that were repeated.
    pub intr_retries: u32,
    /// Whether the returned dump itself was still flagged interrupted, or had a truncated
    /// datagram (retries exhausted).
    pub inconsistent: bool,
    /// Wall time of the dump.
    pub elapsed: Duration,
}

impl Dump {
    /// Ended by our `NLMSG_DONE` and consistent: every link that existed is in it, so a port
    /// absent from it has no netdev. Only such a dump may justify a delete.
    pub fn is_complete(&self) -> bool {
        self.end == DumpEnd::Done && !self.inconsistent
    }
}

/// Runs a link dump on a fresh socket.
pub async fn dump_links(opts: DumpOptions) -> Result<Dump, DumpError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let sock = NlSocket::open()?;
    let mut seq: u32 = (monotonic_ns() as u32) | 1;
    let mut retries = 0;
    loop {
        // The entries live outside the attempt's future so that a timeout keeps what arrived.
        let mut links = Vec::new();
        let mut intr = false;
        let attempt =
            tokio::time::timeout_at(deadline, one_dump(&sock, seq, opts.hold_done, &mut links, &mut intr)).await;
        intr |= opts.force_intr;
        match attempt {
            Err(_elapsed) => {
                return Ok(Dump {
                    links,
                    end: DumpEnd::Timeout,
                    intr_retries: retries,
                    inconsistent: intr,
                    elapsed: started.elapsed(),
                });
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {
                if intr && retries < opts.max_retries {
                    retries += 1;
                    seq = seq.wrapping_add(1);
                    tracing::info!(
                        retry = retries,
                        "link dump interrupted by concurrent changes (NLM_F_DUMP_INTR); dumping again"
                    );
                    continue;
                }
                return Ok(Dump {
                    links,
                    end: DumpEnd::Done,
                    intr_retries: retries,
                    inconsistent: intr,
                    elapsed: started.elapsed(),
                });
            }
        }
    }
}

/// A dump taken on a thread of its own while start-up talks to Redis. The kernel builds the
/// dump inside `recvmsg`, so on the daemon's thread it would add its whole length to the time
/// to PortInitDone; on another core it overlaps the Redis start-up sequence and the state
/// file's load.
#[derive(Debug)]
pub struct BackgroundDump {
    result: tokio::sync::oneshot::Receiver<Result<Dump, DumpError>>,
}

impl BackgroundDump {
    /// Starts the dump now.
    pub fn spawn(opts: DumpOptions) -> Result<Self, DumpError> {
        let (tx, result) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("link-dump".into())
            .spawn(move || {
                let dump = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(DumpError::Io)
                    .and_then(|rt| rt.block_on(dump_links(opts)));
                // The receiver is gone only when start-up was abandoned.
                let _ = tx.send(dump);
            })
            .map_err(DumpError::Io)?;
        Ok(BackgroundDump { result })
    }

    /// The dump, once it ended.
    pub async fn finish(self) -> Result<Dump, DumpError> {
        self.result.await.unwrap_or_else(|_| {
            Err(DumpError::Io(std::io::Error::other("the link dump thread ended without a result")))
        })
    }
}

fn request(seq: u32) -> Vec<u8> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    hdr.sequence_number = seq;
    let mut msg =
        NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(LinkMessage::default())));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Which part of a dump a datagram completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// More replies to come.
    More,
    /// `NLMSG_DONE` of our request: the end of the dump.
    Done,
    /// The kernel answered our request with an error.
    Refused(i32),
}

/// Feeds one reply datagram of the dump `(seq, pid)`: our entries are appended to `links`, and
/// `intr` is set if any of them carried `NLM_F_DUMP_INTR`. Messages of other requests (an
/// interrupted earlier attempt) are ignored.
fn feed(buf: &[u8], seq: u32, pid: u32, hold_done: bool, links: &mut Vec<PortEvent>, intr: &mut bool) -> Progress {
    let mut progress = Progress::More;
    for_each_message(buf, origin::DUMP, monotonic_ns(), |h, m| {
        if h.seq != seq || h.pid != pid {
            return;
        }
        *intr |= h.dump_intr();
        match m {
            Message::Link(ev) if h.multi() => links.push(ev),
            Message::Done if !hold_done => progress = Progress::Done,
            Message::Error(code) if code != 0 => progress = Progress::Refused(code),
            _ => {}
        }
    });
    progress
}

/// One attempt: appends the entries to `links` and sets `intr` if any message was flagged
/// `NLM_F_DUMP_INTR`.
async fn one_dump(
    sock: &NlSocket,
    seq: u32,
    hold_done: bool,
    links: &mut Vec<PortEvent>,
    intr: &mut bool,
) -> Result<(), DumpError> {
    sock.send(&request(seq)).await.map_err(DumpError::Io)?;
    let mut buf = Vec::with_capacity(RECV_BUF);
    loop {
        let len = sock.recv(&mut buf).await.map_err(DumpError::Io)?;
        if is_truncated(len, &buf) {
            // Entries were lost: the attempt cannot be complete; the next one gets a bigger buffer.
            tracing::warn!(len, "link dump datagram truncated; the dump will be repeated");
            *intr = true;
            buf = Vec::with_capacity(grown_capacity(len));
            continue;
        }
        match feed(&buf, seq, sock.port_id(), hold_done, links, intr) {
            Progress::More => {}
            Progress::Done => return Ok(()),
            Progress::Refused(code) => return Err(DumpError::Refused(code)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::parse::tests::{control_msg, link_msg};
    use crate::netlink::parse::{NLMSG_DONE, NLMSG_ERROR};
    use netlink_packet_core::{NLM_F_DUMP_INTR, NLM_F_MULTIPART};

    fn entry(seq: u32, pid: u32, name: &str, flags: u16) -> Vec<u8> {
        let mut b = link_msg(true, 3, name, 0x1, 1500, 0, None, seq, NLM_F_MULTIPART | flags);
        b[12..16].copy_from_slice(&pid.to_ne_bytes());
        b
    }

    #[test]
    fn collects_our_entries_until_our_done() {
        let (mut links, mut intr) = (Vec::new(), false);
        let mut dgram = entry(7, 42, "Ethernet0", 0);
        dgram.extend(entry(6, 42, "Ethernet4", 0)); // an older request's reply
        dgram.extend(entry(7, 99, "Ethernet8", 0)); // another socket's reply
        assert_eq!(feed(&dgram, 7, 42, false, &mut links, &mut intr), Progress::More);
        // NLMSG_DONE of another request does not end ours; ours does, even in the same datagram.
        let mut dgram = control_msg(NLMSG_DONE, 6, 42, 0);
        dgram.extend(entry(7, 42, "Ethernet12", 0));
        dgram.extend(control_msg(NLMSG_DONE, 7, 42, 0));
        assert_eq!(feed(&dgram, 7, 42, false, &mut links, &mut intr), Progress::Done);
        let names: Vec<&[u8]> = links.iter().map(|e| e.name_bytes()).collect();
        assert_eq!(names, [&b"Ethernet0"[..], b"Ethernet12"]);
        assert!(!intr);
    }

    #[test]
    fn interrupted_dumps_are_flagged_and_errors_refuse() {
        let (mut links, mut intr) = (Vec::new(), false);
        assert_eq!(
            feed(&entry(7, 1, "Ethernet0", NLM_F_DUMP_INTR), 7, 1, false, &mut links, &mut intr),
            Progress::More
        );
        assert!(intr);
        assert_eq!(
            feed(&control_msg(NLMSG_ERROR, 7, 1, -16), 7, 1, false, &mut links, &mut intr),
            Progress::Refused(-16)
        );
    }

    #[test]
    fn held_done_never_ends_the_dump() {
        let (mut links, mut intr) = (Vec::new(), false);
        assert_eq!(feed(&control_msg(NLMSG_DONE, 7, 1, 0), 7, 1, true, &mut links, &mut intr), Progress::More);
    }

    #[test]
    fn request_is_a_getlink_dump_with_our_seq() {
        let r = request(1234);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), 18, "RTM_GETLINK");
        assert_eq!(u16::from_ne_bytes([r[6], r[7]]), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(u32::from_ne_bytes([r[8], r[9], r[10], r[11]]), 1234);
    }
}
