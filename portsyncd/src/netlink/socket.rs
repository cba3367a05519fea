//! Netlink sockets: the long-lived event socket joined to `RTNLGRP_LINK`, and short-lived
//! request sockets (dump, admin-down) with their own port id. All are non-blocking and driven by
//! tokio's `AsyncFd`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tokio::io::unix::AsyncFd;

use super::RTNLGRP_LINK;

/// A netlink socket operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Creating, binding or configuring the socket failed.
    #[error("netlink socket {op} failed")]
    Setup {
        /// Which step.
        op: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn setup(op: &'static str) -> impl FnOnce(io::Error) -> SocketError {
    move |source| SocketError::Setup { op, source }
}

/// An async NETLINK_ROUTE socket.
#[derive(Debug)]
pub struct NlSocket {
    fd: AsyncFd<Socket>,
    port_id: u32,
}

impl NlSocket {
    /// A bound, non-blocking NETLINK_ROUTE socket (must be called inside a tokio runtime).
    pub fn open() -> Result<Self, SocketError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(setup("socket(NETLINK_ROUTE)"))?;
        let addr = sock.bind_auto().map_err(setup("bind"))?;
        sock.set_non_blocking(true).map_err(setup("O_NONBLOCK"))?;
        let fd = register(sock).map_err(setup("epoll register"))?;
        Ok(Self { fd, port_id: addr.port_number() })
    }

    /// The event socket: joined to `RTNLGRP_LINK` with a receive buffer of `rcvbuf` bytes.
    /// Returns the socket and the buffer size the kernel actually granted.
    pub fn open_events(rcvbuf: usize) -> Result<(Self, usize), SocketError> {
        let s = Self::open()?;
        let sock = s.fd.get_ref();
        // SO_RCVBUFFORCE ignores net.core.rmem_max (we run as root in SONiC); without
        // CAP_NET_ADMIN fall back to SO_RCVBUF, which the kernel caps at rmem_max.
        if nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::RcvBufForce, &rcvbuf).is_err() {
            sock.set_rx_buf_sz(rcvbuf).map_err(setup("SO_RCVBUF"))?;
        }
        let granted = sock.get_rx_buf_sz().map_err(setup("getsockopt(SO_RCVBUF)"))?;
        sock.add_membership(RTNLGRP_LINK).map_err(setup("NETLINK_ADD_MEMBERSHIP(RTNLGRP_LINK)"))?;
        Ok((s, granted))
    }

    /// `NETLINK_CAP_ACK`: acknowledgements carry only the request's header, not the request.
    pub fn set_cap_ack(&self) -> io::Result<()> {
        self.fd.get_ref().set_cap_ack(true)
    }

    /// Our netlink port id (`nl_pid`), which the kernel puts into replies to our requests.
    pub fn port_id(&self) -> u32 {
        self.port_id
    }

    /// Sends one buffer (one or more netlink messages) to the kernel.
    pub async fn send(&self, buf: &[u8]) -> io::Result<()> {
        let kernel = SocketAddr::new(0, 0);
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|s| s.get_ref().send_to(buf, &kernel, 0)) {
                Ok(res) => return res.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits for and receives one datagram into `buf` (cleared first). Returns the datagram's
    /// real length: more than `buf.len()` means it was truncated (see [`is_truncated`]).
    /// `ENOBUFS` (the kernel dropped messages because the receive buffer was full) is returned
    /// as an error.
    pub async fn recv(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|s| {
                buf.clear();
                s.get_ref().recv(buf, libc::MSG_TRUNC)
            }) {
                Ok(res) => return res,
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits until the socket may have data, and clears tokio's readiness so that the next wait
    /// blocks until new data arrives. Callers drain with [`Self::try_recv`] afterwards.
    pub async fn wait_readable(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Whether data may have arrived since readiness was last taken or waited for, from
    /// tokio's epoll bookkeeping (no system call); clears it as [`Self::wait_readable`] does.
    /// Lets a poller skip reading a socket that mostly carries nothing.
    pub fn take_ready(&self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.fd.poll_read_ready(&mut cx) {
            std::task::Poll::Ready(Ok(mut guard)) => {
                guard.clear_ready();
                true
            }
            // Let the read report the error.
            std::task::Poll::Ready(Err(_)) => true,
            std::task::Poll::Pending => false,
        }
    }

    /// Receives one datagram if one is queued, without waiting. Returns its real length, as
    /// [`Self::recv`] does.
    pub fn try_recv(&self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        buf.clear();
        match self.fd.get_ref().recv(buf, libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

// tokio 1.54 deprecates the safe constructor in favour of an `unsafe` one; the safety argument
// is ours to make either way: the socket is owned by the AsyncFd and closed only when it drops.
#[expect(deprecated, reason = "the safe AsyncFd constructor; the fd is owned by the AsyncFd")]
fn register(sock: Socket) -> io::Result<AsyncFd<Socket>> {
    AsyncFd::new(sock)
}

impl AsFd for NlSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

/// Whether an error from [`NlSocket::recv`] means the kernel dropped notifications.
pub fn is_overrun(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOBUFS)
}

/// Whether a datagram of real length `len` was cut to fit `buf` (MSG_TRUNC): its tail is lost.
/// The caller grows `buf` to [`grown_capacity`] so the next one fits.
pub fn is_truncated(len: usize, buf: &[u8]) -> bool {
    len > buf.len()
}

/// The buffer capacity that holds a datagram of `len` bytes.
pub fn grown_capacity(len: usize) -> usize {
    len.next_power_of_two().max(RECV_BUF)
}

/// Receive buffer for one datagram: notifications are ~1-2 KiB, dump datagrams up to 32 KiB
/// (the kernel sizes them from the reader's buffer, so we leave headroom).
pub const RECV_BUF: usize = 64 * 1024;
