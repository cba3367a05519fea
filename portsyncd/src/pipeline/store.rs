//! The Redis calls of the event path, behind a small interface so that the pipeline's failure
//! paths (refusals, lost connections, NOSCRIPT) are unit-tested with scripted replies; the
//! daemon's implementation is [`crate::writer::Writer`].

use crate::linksync::PortName;
use crate::reconcile::Op;
use crate::redis_conn::{Refusal, WriteError};

/// One command's outcome: done, or refused by Redis (that port only).
pub type Reply<T = ()> = Result<T, Refusal>;

/// Where the pipeline's Redis calls go. `Err` means the connection is lost (or hung past the
/// deadline): nothing of the call can be trusted, and every change is kept for later.
#[expect(
    async_fn_in_trait,
    reason = "the daemon runs on a current-thread runtime: these futures never cross threads, so no `Send` bound is wanted"
)]
pub trait PortStore {
    /// For each of `names`: does APPL_DB `PORT_TABLE:<p>` exist (one round trip).
    async fn present_in_appl(&mut self, names: &[PortName]) -> Result<Vec<Reply<bool>>, WriteError>;
    /// Applies `ops` to STATE_DB in one round trip; one reply per op, in order.
    async fn apply(&mut self, ops: &[Op]) -> Result<Vec<Reply>, WriteError>;
    /// Producer-sets APPL_DB `PORT_TABLE:PortInitDone`.
    async fn port_init_done(&mut self) -> Result<Reply, WriteError>;
}
