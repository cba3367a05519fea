//! Lines held back while the daemon logs a batch's per-port lines, then written with one system
//! call: one `write(2)` to stdout or stderr, one `sendmmsg(2)` of syslog datagrams. Like the C++
//! daemon we log a NOTICE line per STATE_DB write; a storm's batch writes hundreds of rows, and a
//! system call per line was a tenth of the daemon's CPU in a flap storm.
//!
//! Only the holding thread's lines wait, and only until its [`HeldLines`] drops (unwinding
//! included): the watchdog thread's stall warning, for one, goes out at once.

use std::cell::RefCell;
use std::io::Write;
use std::marker::PhantomData;
use std::sync::Arc;

use super::{Output, Shared};

thread_local! {
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// What the holding thread logged so far.
#[derive(Default)]
struct Held {
    /// Formatted lines for `std_target`.
    std: Vec<u8>,
    std_target: Option<Output>,
    /// Syslog datagrams, and where to send them.
    syslog: Vec<Vec<u8>>,
    shared: Option<Arc<Shared>>,
}

impl Held {
    fn write_std(&mut self) {
        let bytes = std::mem::take(&mut self.std);
        if bytes.is_empty() {
            return;
        }
        // As for a line written at once: a closed stdout or stderr loses it, nothing else.
        let _ = match self.std_target {
            Some(Output::Stdout) => std::io::stdout().lock().write_all(&bytes),
            _ => std::io::stderr().lock().write_all(&bytes),
        };
    }

    fn send_syslog(&mut self) {
        let datagrams = std::mem::take(&mut self.syslog);
        if let Some(shared) = &self.shared {
            super::send_syslog(shared, &datagrams);
        }
    }
}

/// Holds this thread's lines until dropped; see the module documentation. Nested holds are
/// one: the outermost writes.
#[derive(Debug)]
#[must_use = "lines are written when the guard drops"]
pub struct HeldLines {
    outermost: bool,
    /// The lines belong to the thread that holds them.
    _thread: PhantomData<*const ()>,
}

/// Starts holding this thread's lines.
pub fn hold_lines() -> HeldLines {
    let outermost = HELD.with(|h| {
        let mut h = h.borrow_mut();
        let first = h.is_none();
        if first {
            *h = Some(Held::default());
        }
        first
    });
    HeldLines { outermost, _thread: PhantomData }
}

impl Drop for HeldLines {
    fn drop(&mut self) {
        if !self.outermost {
            return;
        }
        // Taken out before writing: a line logged while writing goes out on its own.
        if let Some(mut held) = HELD.with(|h| h.borrow_mut().take()) {
            held.write_std();
            held.send_syslog();
        }
    }
}

/// Keeps a stdout/stderr line if this thread holds lines; `false`: write it now.
pub(super) fn hold_std(target: Output, line: &[u8]) -> bool {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        let Some(held) = h.as_mut() else { return false };
        if held.std_target.is_some_and(|t| t != target) {
            // The output was switched within the batch: what was held goes to the old one.
            held.write_std();
        }
        held.std_target = Some(target);
        held.std.extend_from_slice(line);
        true
    })
}

/// Keeps a syslog datagram if this thread holds lines; otherwise hands it back to be sent now.
pub(super) fn hold_syslog(shared: &Arc<Shared>, datagram: Vec<u8>) -> Option<Vec<u8>> {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        let Some(held) = h.as_mut() else { return Some(datagram) };
        if held.shared.is_none() {
            held.shared = Some(Arc::clone(shared));
        }
        held.syslog.push(datagram);
        None
    })
}

/// What this thread holds for stdout/stderr, if it holds lines.
#[cfg(test)]
pub(super) fn held_std() -> Option<(Output, Vec<u8>)> {
    HELD.with(|h| h.borrow().as_ref().map(|held| (held.std_target.unwrap_or(Output::Stderr), held.std.clone())))
}
